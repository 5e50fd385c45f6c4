//! Progress on stderr: a bar (done, rate, ETA) on a terminal, plain lines
//! every few seconds otherwise (a log, a pipe, CI).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often plain progress lines are written.
const LINE_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    total: u64,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl Progress {
    /// Progress over `total` units (bytes read, files) of `what` items.
    pub fn new(total: u64, what: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {percent:>3}% {msg} [{elapsed_precise}, ETA {eta}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            what,
            total,
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// `position` of the total done, `items` processed so far.
    pub fn update(&self, position: u64, items: u64) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = items as f64 / elapsed;
        let message = format!("{items} {} ({rate:.0}/s)", self.what);
        if let Some(bar) = &self.bar {
            bar.set_position(position);
            bar.set_message(message);
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < LINE_EVERY {
            return;
        }
        *last = Instant::now();
        let fraction = position as f64 / self.total.max(1) as f64;
        let eta = if fraction > 0.0 {
            format!("{:.0}s", elapsed / fraction - elapsed)
        } else {
            "?".into()
        };
        eprintln!(
            "progress: {message}, {:.0}% done, ETA {eta}",
            fraction * 100.0
        );
    }

    /// A line that must not be drawn over by the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
