// selm fault-injection shim (LD_PRELOAD), for the server tests only — see selm_fault.c.
//
// Loaded into `selm serve` with LD_PRELOAD=.build/<config>/libSelmFaultShim.so, it acts on the files
// whose resolved path matches SELM_FAULT_PATH (an fnmatch pattern, `*` also matches `/`) and on no
// other descriptor:
//
//   SELM_FAULT_PATH=*/preferences.wal   files to act on (unset: the shim does nothing)
//   SELM_FAULT_EVENTS=FILE              append one line per write / sync / truncate / hold to FILE
//   SELM_FAULT_SYNC_DELAY_MS=MS         sleep MS before each fsync / fdatasync (widens windows)
//   SELM_FAULT_FAIL_SYNC=N:ERR          the Nth fsync / fdatasync fails with ERR (EIO, ENOSPC, a
//                                       number) without syncing
//   SELM_FAULT_FAIL_WRITE=N:ERR[:short] the Nth write call fails with ERR; with `short` it first
//                                       writes half its bytes and returns that count, and the call
//                                       after it fails (how a disk running full looks)
//   SELM_FAULT_HOLD_SYNC=N              the Nth fsync / fdatasync waits, before syncing, until the
//   SELM_FAULT_RELEASE=FILE             file FILE exists (forever when unset): a batch held in flight
//
// Counts (N, 1-based) run over the matched files of the process, in call order. Event lines:
//
//   write fd=F off=O len=L end=E rc=R errno=X t=NS
//   sync n=N call=fsync|fdatasync fd=F size=S rc=R errno=X t0=NS t1=NS
//   hold n=N fd=F size=S t=NS
//   truncate fd=F len=L rc=R t=NS
//
// `size` is the file's size when the sync began (what it makes durable), times are CLOCK_MONOTONIC
// nanoseconds (the same clock in every process of the machine); a sync's line is written after
// the real call returned and before the shim returns to its caller.
#ifndef SELM_FAULT_H
#define SELM_FAULT_H
/// The number of fsync / fdatasync calls on matched files so far (for an in-process check).
long selm_fault_sync_count(void);
#endif
