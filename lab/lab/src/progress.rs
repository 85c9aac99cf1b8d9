//! What `lab up` shows while it works: on a terminal, one line per step that turns from a
//! spinner into a tick with the time it took; otherwise plain lines, one per event.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Reports the steps of `lab up` on stderr.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    quiet: bool,
}

impl Progress {
    /// Progress on stderr, animated when stderr is a terminal.
    pub fn stderr() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            quiet: false,
        }
    }

    /// No output (for library callers such as tests).
    pub fn quiet() -> Progress {
        Progress {
            tty: false,
            quiet: true,
        }
    }

    /// Starts a step; finish it with [`Step::done`] (dropping it marks it failed).
    pub fn step(&self, what: impl Into<String>) -> Step {
        let what = what.into();
        let spinning = Arc::new(AtomicBool::new(true));
        let spinner = if self.tty && !self.quiet {
            let (what, spinning) = (what.clone(), Arc::clone(&spinning));
            Some(std::thread::spawn(move || {
                const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
                let start = Instant::now();
                let mut i = 0;
                while spinning.load(Ordering::Relaxed) {
                    let secs = start.elapsed().as_secs_f32();
                    eprint!("\r\x1b[2K {} {what} ({secs:.1}s)", FRAMES[i % FRAMES.len()]);
                    let _ = std::io::stderr().flush();
                    i += 1;
                    std::thread::sleep(Duration::from_millis(80));
                }
            }))
        } else {
            if !self.quiet {
                eprintln!("- {what} ...");
            }
            None
        };
        Step {
            what,
            start: Instant::now(),
            tty: self.tty,
            quiet: self.quiet,
            spinning,
            spinner,
            finished: false,
        }
    }
}

/// One step of `lab up` in progress.
#[derive(Debug)]
pub struct Step {
    what: String,
    start: Instant,
    tty: bool,
    quiet: bool,
    spinning: Arc<AtomicBool>,
    spinner: Option<std::thread::JoinHandle<()>>,
    finished: bool,
}

impl Step {
    /// Marks the step done, with a short detail (may be empty).
    pub fn done(mut self, detail: &str) {
        self.finish("✓", detail);
    }

    fn finish(&mut self, mark: &str, detail: &str) {
        self.finished = true;
        self.spinning.store(false, Ordering::Relaxed);
        if let Some(t) = self.spinner.take() {
            let _ = t.join();
        }
        if self.quiet {
            return;
        }
        let secs = self.start.elapsed().as_secs_f32();
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        if self.tty {
            eprintln!("\r\x1b[2K {mark} {}{detail} ({secs:.1}s)", self.what);
        } else {
            eprintln!("{mark} {}{detail} ({secs:.1}s)", self.what);
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            self.finish("✗", "failed");
        }
    }
}
