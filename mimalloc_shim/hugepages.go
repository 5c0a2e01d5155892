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
// heap's first segment of each kind on 4 KiB pages: small heaps stay small.
type Hugepages int

const (
	// HugepagesNever advises no segment.
	HugepagesNever Hugepages = C.NG_MI_HUGEPAGES_NEVER
	// HugepagesAuto (the default) advises a heap's second and later segments of small
	// (blocks up to SmallMax) and medium (up to MediumMax) pages: the heap has filled 4 MiB
	// of such pages when it maps them.
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
// NOGIL_HUGEPAGES ("never", "auto", "always") sets the initial policy. A value other than
// the three constants is an error matching nogil.ErrInvalid.
func SetHugepages(m Hugepages) error {
	if st := C.ng_mi_set_hugepages(C.ng_mi_hugepages(m)); st != C.NG_OK {
		return newError("SetHugepages", fmt.Sprintf("unknown policy %d", int(m)), nogil.ErrInvalid)
	}
	return nil
}

// CurrentHugepages returns the policy in effect: the last SetHugepages, else NOGIL_HUGEPAGES
// (an unset or unrecognised value means HugepagesAuto).
func CurrentHugepages() Hugepages {
	return Hugepages(C.ng_mi_get_hugepages())
}
