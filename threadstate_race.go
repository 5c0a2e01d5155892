//go:build race

package nogil

// raceEnabled: the thread-state wrappers show the race detector the C core's
// synchronisation (raceEdges).
const raceEnabled = true
