package nogil

/*
#include <stdlib.h>
#include "nogil.h"
*/
import "C"

import (
	"context"
	"unsafe"
)

// waitContext runs wait, a blocking C call, so that ctx's cancellation wakes it: wait
// receives a C cancellation token to install for the duration of its sleep, and a
// context.AfterFunc fires the token. Returns wait's status.
func waitContext(ctx context.Context, wait func(token *C.ng_cancel) C.int) C.int {
	token := (*C.ng_cancel)(C.calloc(1, C.sizeof_ng_cancel))
	if token == nil {
		panic("nogil: out of C memory")
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		C.ng_cancel_fire(token)
		close(fired)
	})
	status := wait(token)
	if !stop() {
		// The AfterFunc has started: let it finish with the token before freeing it.
		<-fired
	}
	C.free(unsafe.Pointer(token))
	return status
}
