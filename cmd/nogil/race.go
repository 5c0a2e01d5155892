//go:build race

package main

import "sync/atomic"

// raceEdge tells the race detector about the happens-before edge a nogil.Mutex creates.
//
// The detector cannot see it by itself: nogil.Mutex's fast paths are Go atomics on C memory,
// which the detector does not track, and its slow paths run in C. Without this, the
// benchmark's accesses to the shared double (which the lock does protect) are reported as
// races under -race. Atomics on a Go word are tracked: the Add before unlocking acts as a
// release, the Load after locking as an acquire. Remove this once nogil.Mutex annotates
// itself in race builds.
type raceEdge struct{ w atomic.Uint64 }

func (e *raceEdge) acquired()  { e.w.Load() }
func (e *raceEdge) releasing() { e.w.Add(1) }
