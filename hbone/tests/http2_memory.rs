//! What a connection keeps in memory, counted by the allocator (this binary's only test, so
//! nothing else allocates beside it): flow control bounds what a receiver buffers (RFC 9113
//! §5.2), so queued bytes must cost about what they are, whatever the frames around them.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::time::Duration;

use support::raw_h2::*;
use support::*;
use tokio::io::AsyncReadExt;

/// The global allocator, counting live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to `System` unchanged; only the counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_streams_small_frames_do_not_keep_the_connections_read_buffers() {
    // A stream whose reader is slow holds 2 KiB of its window in 2,048 one-byte DATA frames,
    // each sent between 16 KiB frames of a stream read as fast as they come. Queued as slices
    // of the connection's read buffer, each byte kept its whole allocation alive: 64 MiB live
    // for 2 KiB queued.
    let mesh = Mesh::new();
    let (server, mut held) = holding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    p.send(&request(1, target)).await.unwrap();
    p.expect_200(1).await;
    let slow = tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap();
    p.send(&request(3, target)).await.unwrap();
    p.expect_200(3).await;
    let mut bulk = tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap();
    let drained = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let drained = drained.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = bulk.read(&mut buf).await {
                drained.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    });
    p.ping(*b"settled!").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = LIVE.load(Ordering::SeqCst);

    const PAIRS_PER_BATCH: usize = 64;
    const BATCHES: usize = 32;
    let bulk_chunk = [0x5a; CHUNK];
    let mut sent_bulk = 0u64;
    for _ in 0..BATCHES {
        let mut out = Vec::with_capacity(PAIRS_PER_BATCH * (CHUNK + 19));
        for _ in 0..PAIRS_PER_BATCH {
            out.extend(frame(DATA, 0, 1, b"s"));
            out.extend(frame(DATA, 0, 3, &bulk_chunk));
        }
        p.send(&out).await.unwrap();
        sent_bulk += (PAIRS_PER_BATCH * CHUNK) as u64;
        // Within stream 3's window: its reader takes (and releases) each batch before the next.
        let deadline = tokio::time::Instant::now() + WAIT;
        while drained.load(Ordering::SeqCst) < sent_bulk {
            assert!(tokio::time::Instant::now() < deadline, "the bulk stream is read");
            // The server's WINDOW_UPDATEs are read so its output never backs up.
            let _ = tokio::time::timeout(Duration::from_millis(5), p.read_frame()).await;
        }
    }
    p.ping(*b"all read").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let grown = LIVE.load(Ordering::SeqCst) - before;
    assert!(
        grown < 8 << 20,
        "live heap grew by {} KiB while {} bytes are queued on the slow stream ({} MiB passed on the other)",
        grown / 1024,
        BATCHES * PAIRS_PER_BATCH,
        sent_bulk >> 20
    );
    drop(slow);
    reader.abort();
}
