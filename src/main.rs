//! The `longrl` binary: see `longrl --help`.

/// mimalloc keeps freed tensor buffers for reuse (see Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (15 in its `mi_option_e`): how long freed memory stays
/// mapped for reuse before it is returned to the kernel.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // A training step frees and re-allocates the same large buffers over and over; returning them
    // to the kernel and faulting them back in (zeroed) costs a fifth of a CPU step. Freed memory
    // is kept for reuse instead (-1: never purge), as PyTorch's caching allocators do: resident
    // memory stays at its high-water mark. `MIMALLOC_PURGE_DELAY` in the environment still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; called before any other thread starts.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    longrl::cli::run_main()
}
