//! The global allocator, and handing its free memory back to the operating system.
//!
//! mimalloc: the request path allocates many small short-lived objects (JSON trees, headers),
//! and glibc malloc showed as ~15% of CPU under load. Its weak spot is a thread that freed a lot
//! and then goes idle: its free pages stay with it until it allocates again. The store's writer
//! thread is such a thread after a reset, which frees the whole in-memory copy of the state.
//! [`release_free_memory`] is called there, and by the reset handler, so RSS returns to its idle
//! level.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the calling thread's free heap pages, and the unused pages of every arena, to the
/// operating system.
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and touches only mimalloc's own bookkeeping of the
    // calling thread and of the arenas, under mimalloc's own locks; its documentation allows a
    // call at any time from any thread. This is Fleetport's only `unsafe` (reviewed with the
    // scale-out issue): the workspace denies `unsafe_code` everywhere else.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
