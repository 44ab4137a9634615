//! `meshctl observe`: this node's flows from meshd's control socket (`flows`, or with
//! `--follow` `flows follow`), filtered and printed here (the filter and the table are
//! `meshd::flows::{filter, render}`). `meshctl lab observe` (in `lab_observe`) feeds the same
//! printing from every lab node.
//!
//! The history is answered first, ordered here by time (meshd keeps it in the order events
//! were decoded; an aggregate carries the end of its interval); `--last N` applies to it. With
//! `--follow` the history is what arrives before the stream first goes quiet for
//! [`HISTORY_QUIET`] after a first line (the daemon writes it in one burst; without any line it
//! is empty after [`HISTORY_GRACE`]); from then on every matching line is printed as it
//! arrives.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use meshd::flows::filter::{FlowFilter, LastWindow, StreamLine};
use meshd::flows::record::FlowsResponse;
use meshd::flows::render;

use crate::cli::{ObserveArgs, Output};

/// How long the stream must be quiet before `--follow` takes the history as complete.
pub(crate) const HISTORY_QUIET: Duration = Duration::from_millis(300);

/// How long `--follow` waits for the first line before it takes the history as empty (starting
/// the observers of a lab's nodes takes a while).
pub(crate) const HISTORY_GRACE: Duration = Duration::from_secs(3);

/// How long `meshctl observe` (without `--follow`) waits for the next line of the history.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong reading meshd's flows.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObserveError {
    /// The socket could not be reached.
    #[error("connecting to meshd's control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("talking to meshd's control socket {path}")]
    Exchange {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading a stream of lines failed.
    #[error("reading {source_name}")]
    Read {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    /// meshd answered an error instead of flows (e.g. a meshd without flow events).
    #[error("{source_name}: meshd refused the request: {message}")]
    Refused {
        source_name: String,
        message: String,
    },
    /// A line that is not a stream line.
    #[error("{source_name}: line {number} is not a flow record ({line:?})")]
    Malformed {
        source_name: String,
        number: usize,
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A stream line as read: parsed (for the filter and the table) and the text it came from,
/// which `-o json` prints unchanged (fields this meshctl does not know included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) line: FlowsResponse,
    pub(crate) text: String,
}

impl StreamLine for Received {
    fn response(&self) -> &FlowsResponse {
        &self.line
    }
}

/// Reads stream line `number` (1-based) from `source_name`: a [`FlowsResponse`], or the
/// daemon's `{"error": …}` answer, or a malformed line, each a clear error.
pub(crate) fn parse_line(
    source_name: &str,
    number: usize,
    line: &str,
) -> Result<Received, ObserveError> {
    let parsed = serde_json::from_str::<FlowsResponse>(line).map_err(|source| {
        let refusal = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
        match refusal {
            Some(message) => ObserveError::Refused {
                source_name: source_name.to_string(),
                message,
            },
            None => ObserveError::Malformed {
                source_name: source_name.to_string(),
                number,
                line: shorten(line),
                source,
            },
        }
    })?;
    Ok(Received {
        line: parsed,
        text: line.trim_end().to_string(),
    })
}

/// At most 200 characters of a line, for an error.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// Where the lines go: the table (its header first) or JSON lines, on `out`.
pub(crate) struct Printer<W: Write> {
    out: W,
    output: Output,
    header_done: bool,
}

impl<W: Write> Printer<W> {
    pub(crate) fn new(out: W, output: Output) -> Self {
        Printer {
            out,
            output,
            header_done: false,
        }
    }

    /// Print lines (and, before the first line, the table's header), flushing after them.
    pub(crate) fn print(&mut self, lines: &[Received]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        if let Output::Table = self.output {
            if !self.header_done {
                writeln!(self.out, "{}", render::header())?;
                self.header_done = true;
            }
        }
        for line in lines {
            match self.output {
                Output::Table => writeln!(self.out, "{}", render::table_line(&line.line))?,
                Output::Json => writeln!(self.out, "{}", line.text)?,
            }
        }
        self.out.flush()
    }
}

/// `--follow`'s state: the history (until the stream first goes quiet) is held, merged by
/// time and cut to `--last`; later lines pass straight through. Pure.
pub(crate) struct FollowState {
    filter: FlowFilter,
    history: Option<Vec<Received>>,
    /// Whether any line (matching or not) arrived yet.
    heard: bool,
}

impl FollowState {
    pub(crate) fn new(filter: FlowFilter) -> Self {
        FollowState {
            filter,
            history: Some(Vec::new()),
            heard: false,
        }
    }

    /// A line arrived: what to print now.
    pub(crate) fn line(&mut self, line: Received) -> Vec<Received> {
        self.heard = true;
        if !self.filter.matches(&line) {
            return Vec::new();
        }
        match &mut self.history {
            Some(history) => {
                history.push(line);
                Vec::new()
            }
            None => vec![line],
        }
    }

    /// The stream was quiet for [`HISTORY_QUIET`], `waited` after the start: the history ends
    /// if a line arrived before, or once [`HISTORY_GRACE`] has passed without any.
    pub(crate) fn quiet(&mut self, waited: Duration) -> Vec<Received> {
        if !self.heard && waited < HISTORY_GRACE {
            return Vec::new();
        }
        self.end_history()
    }

    /// The history ends (or the stream did): the history, once, by time and cut to `--last`.
    pub(crate) fn end_history(&mut self) -> Vec<Received> {
        match self.history.take() {
            Some(history) => last_by_time(history, self.filter.last),
            None => Vec::new(),
        }
    }
}

/// Matching lines ordered by time (stable: lines of one time keep their order), then the
/// newest `last` flows of them (and every lost-events line).
pub(crate) fn last_by_time(mut lines: Vec<Received>, last: Option<usize>) -> Vec<Received> {
    lines.sort_by_key(|l| l.line.time);
    let mut window = LastWindow::new(last);
    for line in lines {
        window.push(line);
    }
    window.finish()
}

/// Drive a `--follow` from a channel of lines until every sender is gone.
pub(crate) fn follow<W: Write>(
    lines: mpsc::Receiver<Result<Received, ObserveError>>,
    filter: FlowFilter,
    printer: &mut Printer<W>,
) -> anyhow::Result<()> {
    let mut state = FollowState::new(filter);
    let start = std::time::Instant::now();
    loop {
        match lines.recv_timeout(HISTORY_QUIET) {
            Ok(line) => printer.print(&state.line(line?))?,
            Err(mpsc::RecvTimeoutError::Timeout) => printer.print(&state.quiet(start.elapsed()))?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                printer.print(&state.end_history())?;
                return Ok(());
            }
        }
    }
}

/// Read stream lines from `reader` (named `source_name` in errors) into `send`, until EOF, an
/// error, or the receiver is gone.
pub(crate) fn pump(
    reader: impl BufRead,
    source_name: &str,
    send: &mpsc::Sender<Result<Received, ObserveError>>,
) {
    for (i, line) in reader.lines().enumerate() {
        let parsed = match line {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => parse_line(source_name, i + 1, &text),
            Err(source) => Err(ObserveError::Read {
                source_name: source_name.to_string(),
                source,
            }),
        };
        let stop = parsed.is_err();
        if send.send(parsed).is_err() || stop {
            return;
        }
    }
}

/// Connect to the control socket and send the request line.
fn request(socket: &Path, follow: bool) -> Result<UnixStream, ObserveError> {
    let stream = UnixStream::connect(socket).map_err(|source| ObserveError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let exchange = |source| ObserveError::Exchange {
        path: socket.to_path_buf(),
        source,
    };
    if !follow {
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(exchange)?;
    }
    (&stream)
        .write_all(if follow {
            b"flows follow\n"
        } else {
            b"flows\n"
        })
        .map_err(exchange)?;
    Ok(stream)
}

/// `meshctl observe`.
pub(crate) fn run(args: &ObserveArgs, socket: &Path) -> anyhow::Result<ExitCode> {
    let filter = FlowFilter::from_flags(&args.filter_flags(), jiff::Timestamp::now())?;
    let stream = request(socket, args.follow)?;
    let stdout = std::io::stdout();
    let mut printer = Printer::new(stdout.lock(), args.output);
    let source_name = format!("meshd's answer on {}", socket.display());
    let io_error = |source| ObserveError::Exchange {
        path: socket.to_path_buf(),
        source,
    };
    let result = if args.follow {
        let (send, lines) = mpsc::channel();
        let name = source_name.clone();
        std::thread::spawn(move || pump(BufReader::new(stream), &name, &send));
        follow(lines, filter, &mut printer)
    } else {
        let mut matching = Vec::new();
        for (i, line) in BufReader::new(stream).lines().enumerate() {
            let text = line.map_err(io_error)?;
            if text.trim().is_empty() {
                continue;
            }
            let line = parse_line(&source_name, i + 1, &text)?;
            if filter.matches(&line) {
                matching.push(line);
            }
        }
        printer
            .print(&last_by_time(matching, filter.last))
            .map_err(Into::into)
    };
    quiet_on_broken_pipe(result)
}

/// `meshctl observe | head` ends the command quietly.
pub(crate) fn quiet_on_broken_pipe(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests;
