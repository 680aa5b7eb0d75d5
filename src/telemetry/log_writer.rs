//! A buffered, non-blocking log writer: request threads append formatted lines to a shared
//! buffer and one writer thread writes them to stderr in batches. Writing each access-log
//! line straight to stderr cost one `write` syscall (and a lock on stderr) per request on
//! the runtime's worker thread; now a request pays a memcpy under a short lock, and the
//! writer thread pays one syscall per batch.
//!
//! - Lines are never dropped: a request thread waits when `MAX_PENDING` bytes are already
//!   queued (stderr cannot keep up), which bounds memory as the direct writes did.
//! - The writer lets `BATCH_WINDOW` pass before each write, so the lines of concurrent
//!   requests leave in one write. After a write it looks again one window later, and only
//!   when that window brought nothing does it wait to be woken: a wake-up is a syscall on
//!   the request thread (and a switch to the writer on a shared core), so under steady
//!   traffic no request pays one; an idle gateway's writer sleeps until the next line.
//! - [`LogGuard`] (held by `main`) writes what is left when the process ends normally.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after the first one of a batch.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Queued bytes beyond which request threads wait for the writer.
const MAX_PENDING: usize = 1 << 20;

#[derive(Default)]
struct Queue {
    pending: Vec<u8>,
    closed: bool,
    /// The writer waits on `work` for a line (only then is it signalled).
    writer_waiting: bool,
    /// Request threads waiting on `room` (signalled after a write only if there are).
    waiting_for_room: usize,
}

struct Shared {
    /// How long the lines of a batch gather (`BATCH_WINDOW`; tests use longer).
    window: Duration,
    /// Times a line woke the writer (tests).
    wakeups: std::sync::atomic::AtomicUsize,
    queue: Mutex<Queue>,
    /// Signals the writer: the first line of a batch, or close.
    work: Condvar,
    /// Signals request threads waiting for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        let mut queue = self.lock();
        while queue.pending.len() >= MAX_PENDING && !queue.closed {
            queue.waiting_for_room += 1;
            queue = self.room.wait(queue).unwrap_or_else(|e| e.into_inner());
            queue.waiting_for_room -= 1;
        }
        if queue.closed {
            // After close (process exit) there is no writer thread: write directly.
            drop(queue);
            let _ = std::io::stderr().write_all(bytes);
            return;
        }
        queue.pending.extend_from_slice(bytes);
        let wake = std::mem::take(&mut queue.writer_waiting);
        drop(queue);
        if wake {
            self.wakeups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.work.notify_one();
        }
    }

    /// The writer thread: waits for a batch, lets it gather, writes it in one go.
    fn run(&self, mut out: impl Write) {
        let mut batch = Vec::new();
        loop {
            let mut queue = self.lock();
            let mut gather = true;
            if queue.pending.is_empty() && !queue.closed {
                // Nothing yet: look again a window later before asking to be woken.
                drop(queue);
                self.sleep();
                queue = self.lock();
                if queue.pending.is_empty() && !queue.closed {
                    queue.writer_waiting = true;
                    while queue.pending.is_empty() && !queue.closed {
                        queue = self.work.wait(queue).unwrap_or_else(|e| e.into_inner());
                    }
                    queue.writer_waiting = false;
                } else {
                    // These lines gathered during that window.
                    gather = false;
                }
            }
            let closing = queue.closed;
            if gather && !closing {
                drop(queue);
                self.sleep();
                queue = self.lock();
            }
            std::mem::swap(&mut batch, &mut queue.pending);
            let waiting_for_room = queue.waiting_for_room > 0;
            drop(queue);
            if waiting_for_room {
                self.room.notify_all();
            }
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
            if closing {
                return;
            }
        }
    }

    fn sleep(&self) {
        // This is the writer's own thread, never a runtime worker.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(self.window);
    }
}

/// The `MakeWriter` for the fmt subscriber.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl LogWriter {
    /// Appends whole lines (the access log's direct rendering).
    pub(crate) fn append(&self, lines: &[u8]) {
        self.shared.append(lines);
    }
}

/// One event's writer: the fmt layer formats an event into its own buffer and writes it
/// in one `write_all`, so each call appends whole lines.
pub struct EventWriter<'a> {
    shared: &'a Shared,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            shared: &self.shared,
        }
    }
}

/// Writes the remaining lines and stops the writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The process's stderr writer and the guard that flushes it; `None` if the writer thread
/// could not be started (the caller then writes to stderr directly).
pub fn stderr() -> Option<(LogWriter, LogGuard)> {
    static STARTED: OnceLock<()> = OnceLock::new();
    // One writer per process: a second call (tests start several gateways) gets none.
    STARTED.set(()).ok()?;
    spawn(std::io::stderr()).ok()
}

fn spawn(out: impl Write + Send + 'static) -> std::io::Result<(LogWriter, LogGuard)> {
    spawn_with(out, BATCH_WINDOW)
}

fn spawn_with(
    out: impl Write + Send + 'static,
    window: Duration,
) -> std::io::Result<(LogWriter, LogGuard)> {
    let shared = Arc::new(Shared {
        window,
        wakeups: Default::default(),
        queue: Mutex::default(),
        work: Condvar::new(),
        room: Condvar::new(),
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || shared.run(out))?
    };
    Ok((
        LogWriter {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` into a shared buffer, counting the writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut sink = self.0.lock().unwrap();
            sink.0.extend_from_slice(buf);
            sink.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Under steady traffic no line wakes the writer (a syscall on the request thread):
    /// it comes back a window after each write and finds the next lines waiting. Lines
    /// here come every millisecond, well inside the (test's longer) window; waking the
    /// writer for the first line of each batch made one wake-up per window.
    #[test]
    #[allow(clippy::disallowed_methods)] // a plain thread, timed as the writer is
    fn steady_lines_do_not_wake_the_writer() {
        let sink = Sink::default();
        let window = Duration::from_millis(40);
        let (writer, guard) = spawn_with(sink.clone(), window).unwrap();
        let lines = 400;
        for _ in 0..lines {
            writer.append(b"line\n");
            std::thread::sleep(Duration::from_millis(1));
        }
        let wakeups = guard
            .shared
            .wakeups
            .load(std::sync::atomic::Ordering::Relaxed);
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        assert_eq!(bytes.len(), lines * 5, "every line written");
        assert!(writes >= 5, "{writes} writes: one per window or so");
        assert!(wakeups <= 3, "{wakeups} wake-ups for {lines} steady lines");
    }

    #[test]
    fn lines_leave_whole_in_order_and_in_batches() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let line = format!("thread {t} line {i}\n");
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
        assert!(writes < 4000, "{writes} writes for 4000 lines: not batched");
    }

    #[test]
    fn the_guard_writes_what_is_queued() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone()).unwrap();
        writer.make_writer().write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().0, b"last words\n");
        // After close, lines go straight out (to stderr) instead of being lost.
        writer.make_writer().write_all(b"").unwrap();
    }
}
