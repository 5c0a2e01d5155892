package mimalloc_shim

// #include "nogil.h"
import "C"

import (
	"fmt"

	"github.com/nogil-go/nogil"
)

// Hugepages says which segments are advised for transparent huge pages (Linux
// madvise(MADV_HUGEPAGE); the kernel's transparent_hugepage/enabled must be "madvise" or
// "always" for the advice to matter).
//
// Blocks used at random from more memory than the TLB covers with 4 KiB pages (about 6 MiB
// on current x86 cores) miss the TLB on most accesses; 2 MiB pages remove those misses. A
// huge page is resident as a whole once touched, so the default, HugepagesAuto, keeps a
// heap on 4 KiB pages until it outgrows a segment it has mostly used: small heaps stay
// small.
type Hugepages int

const (
	// HugepagesNever advises no segment.
	HugepagesNever Hugepages = C.NG_MI_HUGEPAGES_NEVER
	// HugepagesAuto (the default) advises a new segment of small (blocks up to SmallMax)
	// or medium (up to MediumMax) pages when the heap already has one of that kind with
	// blocks carved from three quarters of it or more, and then advises those dense ones
	// too, collapsing their 4 KiB pages into huge ones (two per new segment).
	HugepagesAuto Hugepages = C.NG_MI_HUGEPAGES_AUTO
	// HugepagesAlways advises every small, medium and large segment (never the huge ones
	// of blocks above LargeMax).
	HugepagesAlways Hugepages = C.NG_MI_HUGEPAGES_ALWAYS
)

func (m Hugepages) String() string {
	switch m {
	case HugepagesNever:
		return "never"
	case HugepagesAuto:
		return "auto"
	case HugepagesAlways:
		return "always"
	}
	return fmt.Sprintf("Hugepages(%d)", int(m))
}

// SetHugepages sets the policy for segments mapped from now on, in every interpreter of the
// process; segments mapped earlier keep their advice. The environment variable
// NOGIL_HUGEPAGES ("never", "auto", "always"), read when the first segment is mapped, sets
// the initial policy. A value other than the three constants is an error matching
// nogil.ErrInvalid.
func SetHugepages(m Hugepages) error {
	// Checked here too: the C enum is narrower than int, so a large value would wrap to a
	// valid one on its way there.
	if m < HugepagesNever || m > HugepagesAlways || C.ng_mi_set_hugepages(C.ng_mi_hugepages(m)) != C.NG_OK {
		return newError("SetHugepages", fmt.Sprintf("unknown policy %d", int(m)), nogil.ErrInvalid)
	}
	return nil
}

// CurrentHugepages returns the policy in effect: the last SetHugepages, else NOGIL_HUGEPAGES
// (an unset or unrecognised value means HugepagesAuto).
func CurrentHugepages() Hugepages {
	return Hugepages(C.ng_mi_get_hugepages())
}
