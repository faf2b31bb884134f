//! `ddp-run`: process set-up (allocator, thread pools), then the commands in `cli`.

mod cli;

use std::process::ExitCode;

// Tensors of a few hundred KB are allocated and freed for every layer of every decoded token;
// glibc's malloc maps and unmaps them each time (a page fault per 4 KB, a third of decode time
// at a 512-token context). mimalloc keeps freed pages for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: i32 = 15;

extern "C" {
    /// Part of the mimalloc library that the allocator above links.
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// Tells mimalloc never to hand freed memory back to the OS (a user's `MIMALLOC_PURGE_DELAY`
/// wins). By default it purges after 10 ms, and a training step's logits-sized buffers (100 MB
/// at batch 4) then came back as fresh pages the kernel zeroes on every step: 110k page faults
/// in a 4-step batch-4 run against 3k, and 56-65 against 84 tokens/s (`ddp-run bench --train
/// --batch 4 --teacher cached`). The cost: the process keeps its peak memory until it exits.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain option setter of the linked allocator; any value is valid.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    // The CPU matmul splits GEMMs into row blocks on rayon's threads; matrixmultiply's own pool
    // would compete with them for the same cores (compare `MATMUL_NUM_THREADS=2 ddp-run bench`).
    // Set before any thread starts; a user's value wins.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", "1");
    }
    keep_freed_memory();
    cli::main()
}
