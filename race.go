//go:build race

package nogil

import "sync/atomic"

// raceEdge shows the race detector a hand-over that it cannot see on its own: the locks'
// state lives in C memory and their slow paths run in C, neither of which it instruments, so
// without this every Go variable guarded by a nogil lock would be reported as racy. release
// and acquire are a sync/atomic store/load pair on Go memory, which the detector models as
// a happens-before edge. In non-race builds the type is empty and the calls vanish.
type raceEdge struct{ v atomic.Uint32 }

func (e *raceEdge) release() { e.v.Add(1) }
func (e *raceEdge) acquire() { e.v.Load() }
