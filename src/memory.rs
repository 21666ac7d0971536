//! The process's memory: glibc's allocator kept small for a service whose ~20 threads
//! mostly wait, and what start-up and bursts of work freed given back to the system.

/// Caps glibc's malloc arenas at two, unless `MALLOC_ARENA_MAX` says otherwise. By
/// default glibc gives each of the ~20 threads (librdkafka's among them) that allocate
/// at once an arena of its own; two cut the idle anonymous memory by about 0.7 MiB
/// (one: 1 MiB) on a handler whose threads mostly wait (see the README's benchmark).
pub fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Gives the pages of freed memory back to the system. glibc keeps what start-up
/// (migrations, the rights check, the admin client) and a burst of batches freed in
/// its arenas, counted in the process's resident memory, until a trim; called once
/// running, and by a loop when its topic falls quiet after work, it takes tens of
/// microseconds.
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
