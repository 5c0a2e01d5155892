/* Process-unique thread identifiers.
 *
 * ng_thread_id() is nonzero, constant for the life of the calling thread and never reused by
 * another thread of the process (a 64-bit counter, assigned on first use). Unlike a TLS address
 * or a kernel tid, an id of an exited thread can therefore never be mistaken for a live one.
 * In the child of fork() the surviving thread keeps its id.
 */
#ifndef NOGIL_THREAD_ID_H
#define NOGIL_THREAD_ID_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

uint64_t ng_thread_id(void);

#ifdef __cplusplus
}
#endif
#endif /* NOGIL_THREAD_ID_H */
