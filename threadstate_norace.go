//go:build !race

package nogil

// raceEnabled is false: the raceEdges calls, and the loads that decide them, compile away.
const raceEnabled = false
