//! The terminal view: the alternate screen in raw mode, redrawn in place every interval, driven
//! by keys alone (`q`/Esc/Ctrl-C quit, `s` sorts by the next column) so it works over SSH. The
//! screen is restored however the view ends: quit, error, signal or panic.

use super::mesh::{Frame, Mesh};
use super::{fmt, stamp, Args, SortBy};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::Print;
use crossterm::terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute, queue};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Raw mode and the alternate screen, left again on drop.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Self> {
        terminal::enable_raw_mode()?;
        // From here on the guard exists, so a failure below still leaves raw mode.
        let screen = Screen;
        execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        // The default hook prints the panic message; restore first so it lands on the normal
        // screen instead of vanishing with the alternate one.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

fn restore() {
    let _ = execute!(std::io::stdout(), cursor::Show, LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

enum Input {
    Key(KeyEvent),
    Resize,
    Failed(std::io::Error),
}

/// Reads terminal events on a thread of its own (crossterm's reads block) until told to stop.
struct Keys {
    rx: mpsc::UnboundedReceiver<Input>,
    stop: Arc<AtomicBool>,
}

impl Keys {
    fn spawn() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                // A short poll, so the thread notices `stop` soon after the view ends.
                let input = match event::poll(Duration::from_millis(100)) {
                    Ok(false) => continue,
                    Ok(true) => match event::read() {
                        Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => Input::Key(k),
                        Ok(Event::Resize(..)) => Input::Resize,
                        Ok(_) => continue,
                        Err(e) => Input::Failed(e),
                    },
                    Err(e) => Input::Failed(e),
                };
                let failed = matches!(input, Input::Failed(_));
                if tx.send(input).is_err() || failed {
                    return;
                }
            }
        });
        Self { rx, stop }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What is on screen: the last frame that arrived, and the last error if the latest look
/// failed (the frame before it stays, marked by the error line).
struct State<'a> {
    url: &'a str,
    interval: Duration,
    sort: SortBy,
    frame: Option<Frame>,
    error: Option<String>,
    at: String,
}

pub async fn run(mesh: &mut Mesh<'_>, url: &str, args: &Args) -> anyhow::Result<ExitCode> {
    let mut state = State {
        url,
        interval: args.interval,
        sort: args.sort,
        frame: None,
        error: None,
        at: String::new(),
    };
    let _screen = Screen::enter()?;
    let mut keys = Keys::spawn();
    let stop = super::super::up::stop_signal();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    draw(&state)?;
    loop {
        // Keys are answered while a look is under way: a slow sidecar never delays `q`.
        let look = async {
            tick.tick().await;
            mesh.look().await
        };
        tokio::pin!(look);
        let result = loop {
            tokio::select! {
                r = &mut look => break r,
                input = keys.rx.recv() => match input {
                    Some(Input::Key(k)) if quits(&k) => return Ok(ExitCode::SUCCESS),
                    Some(Input::Key(k)) if k.code == KeyCode::Char('s') => {
                        state.sort = state.sort.next();
                        draw(&state)?;
                    }
                    Some(Input::Key(_)) => {}
                    Some(Input::Resize) => draw(&state)?,
                    Some(Input::Failed(e)) => return Err(anyhow::anyhow!("reading the terminal: {e}")),
                    None => return Err(anyhow::anyhow!("the terminal closed")),
                },
                _ = &mut stop => return Ok(ExitCode::SUCCESS),
            }
        };
        state.at = stamp();
        match result {
            Ok(frame) => {
                state.frame = frame.or(state.frame.take());
                state.error = None;
            }
            Err(e) => state.error = Some(format!("{e:#}")),
        }
        draw(&state)?;
    }
}

fn quits(k: &KeyEvent) -> bool {
    match k.code {
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
        KeyCode::Char('c') => k.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

fn lines(state: &State<'_>) -> Vec<String> {
    // The keys first: on a narrow terminal they are what must stay visible.
    let mut out = vec![format!(
        "[q] quit  [s] sort: {}  every {}  {}  {}",
        state.sort.name(),
        fmt(state.interval),
        state.url,
        state.at
    )];
    out.push(String::new());
    match &state.frame {
        Some(f) => out.extend(f.text(state.sort).lines().map(str::to_string)),
        None if state.error.is_none() => out.push(format!(
            "measuring: the first rates take {} ...",
            fmt(state.interval)
        )),
        None => {}
    }
    if let Some(e) = &state.error {
        out.push(String::new());
        out.push(format!(
            "error: {e} (retrying every {})",
            fmt(state.interval)
        ));
    }
    out
}

/// Every line is cut to the terminal's width and the screen's height: a narrow terminal
/// shows less, never a wrapped jumble.
fn draw(state: &State<'_>) -> std::io::Result<()> {
    let (width, height) = terminal::size().unwrap_or((80, 24));
    let mut out = std::io::stdout().lock();
    for (y, line) in lines(state).iter().take(usize::from(height)).enumerate() {
        let cut: String = line.chars().take(usize::from(width)).collect();
        let y = u16::try_from(y).unwrap_or(u16::MAX);
        queue!(
            out,
            cursor::MoveTo(0, y),
            Print(cut),
            Clear(ClearType::UntilNewLine)
        )?;
    }
    queue!(out, Clear(ClearType::FromCursorDown))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_that_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('s'), KeyModifiers::NONE)));
    }

    #[test]
    fn an_error_keeps_the_last_frame_and_says_so() {
        let state = State {
            url: "http://127.0.0.1:15010",
            interval: Duration::from_secs(2),
            sort: SortBy::P99,
            frame: Some(Frame::default()),
            error: Some("cannot reach the control plane".into()),
            at: String::new(),
        };
        let text = lines(&state).join("\n");
        assert!(text.contains("SERVICE"), "{text}");
        assert!(text.contains("sort: p99"), "{text}");
        assert!(
            text.contains("error: cannot reach the control plane (retrying every 2s)"),
            "{text}"
        );
    }
}
