//! The desktop API under `/v2/desktop`: screenshots (PNG, optional region and scale) read from
//! the X server's framebuffer, and mouse, keyboard, cursor and window calls carried out with
//! `xdotool` (XTEST) on the configured display.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};

use crate::App;
use crate::error::ApiError;
use crate::framebuffer::{self, FrameError, Region};
use crate::process::{Exit, KillOnDrop, SpawnSpec};

/// Screenshots encoded at once; more callers wait their turn (each takes a core for a while).
const PARALLEL_SCREENSHOTS: usize = 2;
/// Upper bound of one `xdotool` call.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest text accepted by one `type` call.
const MAX_TEXT: usize = 64 * 1024;

static SCREENSHOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(PARALLEL_SCREENSHOTS));
/// Input calls run one at a time, so that a drag is not interleaved with a click.
static INPUT: LazyLock<Mutex<()>> = LazyLock::new(|| Mutex::new(()));

/// The configured display, or 404 when this sandbox has no desktop.
fn display(app: &App) -> Result<String, ApiError> {
    app.config.desktop_display.clone().ok_or_else(|| {
        ApiError::not_found(
            "this sandbox has no desktop: start sandboxd with --desktop-display (the desktop image does)",
        )
    })
}

/// 503 unless the X server of `display` accepts connections.
fn x_alive(display: &str) -> Result<(), ApiError> {
    let number = display
        .trim_start_matches(|c: char| c != ':')
        .trim_start_matches(':')
        .split('.')
        .next()
        .unwrap_or("");
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
    std::os::unix::net::UnixStream::connect(&socket)
        .map(drop)
        .map_err(|e| x_down(display, &format!("{}: {e}", socket.display())))
}

fn x_down(display: &str, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        format!(
            "the X server of display {display} is not running ({why}); sandboxd restarts it \
             (see GET /v2/services), retry in a second"
        ),
    )
}

fn frame_error(app: &App, display: &str, e: FrameError) -> ApiError {
    match e {
        FrameError::Region { .. } => ApiError::invalid(e.to_string()),
        FrameError::Read { .. } => x_down(
            display,
            &format!(
                "{e}; is Xvfb started with -fbdir {}?",
                app.config
                    .desktop_framebuffer
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        ),
        _ => ApiError::internal(e.to_string()),
    }
}

/// Runs `xdotool args...` on the display and returns its stdout.
async fn xdotool(app: &Arc<App>, display: &str, args: &[String]) -> Result<String, ApiError> {
    x_alive(display)?;
    let mut argv = vec!["xdotool".to_string()];
    argv.extend_from_slice(args);
    let spec = SpawnSpec {
        argv,
        env: vec![("DISPLAY".into(), display.to_string())],
        cwd: app.root.work_path(),
        ..SpawnSpec::default()
    };
    let mut child = app.sup.spawn(spec).map_err(|e| {
        ApiError::internal(format!(
            "{e}; the desktop image ships xdotool (apt-get install xdotool)"
        ))
    })?;
    let mut guard = KillOnDrop::new(child.pid);
    let read = |pipe: Option<tokio::net::unix::pipe::Receiver>| async move {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut p, &mut buf).await;
        }
        String::from_utf8_lossy(&buf).into_owned()
    };
    let run = async {
        let (out, err) = tokio::join!(read(child.stdout.take()), read(child.stderr.take()));
        let exit = (&mut child.exit).await.unwrap_or(Exit::Code(-1));
        (out, err, exit)
    };
    let (out, err, exit) = tokio::time::timeout(TOOL_TIMEOUT, run).await.map_err(|_| {
        ApiError::internal(format!(
            "xdotool {} did not finish within {TOOL_TIMEOUT:?}; the X server may be hung",
            args.join(" ")
        ))
    })?;
    guard.disarm();
    if let Some(line) = err.lines().find(|l| l.contains("No such key name")) {
        return Err(ApiError::invalid(format!(
            "unknown key: {}; use X keysym names such as Return, BackSpace, ctrl+a, super, F5",
            line.trim()
        )));
    }
    if err.contains("Can't open display") || err.contains("Failed creating new xdo") {
        return Err(x_down(display, err.trim()));
    }
    if exit.shell_code() != 0 {
        return Err(ApiError::internal(format!(
            "xdotool {} failed ({}): {}",
            args.join(" "),
            exit.shell_code(),
            err.trim()
        )));
    }
    Ok(out)
}

/// Screen size from the framebuffer.
fn screen(app: &App, display: &str) -> Result<(u32, u32), ApiError> {
    x_alive(display)?;
    framebuffer::screen_size(&app.config.desktop_framebuffer)
        .map_err(|e| frame_error(app, display, e))
}

/// 400 unless (x, y) is on the screen.
fn on_screen(app: &App, display: &str, x: i64, y: i64) -> Result<(), ApiError> {
    let (w, h) = screen(app, display)?;
    if x < 0 || y < 0 || x >= i64::from(w) || y >= i64::from(h) {
        return Err(ApiError::invalid(format!(
            "point ({x}, {y}) is outside the {w}x{h} screen; x must be in 0..{w} and y in 0..{h}"
        )));
    }
    Ok(())
}

/// Query of `GET /v2/desktop/screenshot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenshotQuery {
    x: Option<u32>,
    y: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
    /// 0 < scale ≤ 1.
    scale: Option<f64>,
}

/// `GET /v2/desktop/screenshot`: a PNG of the screen or of a region, optionally scaled down.
pub async fn screenshot(
    State(app): State<Arc<App>>,
    Query(q): Query<ScreenshotQuery>,
) -> Result<Response, ApiError> {
    let display = display(&app)?;
    let region = match (q.x, q.y, q.width, q.height) {
        (None, None, None, None) => None,
        (x, y, Some(width), Some(height)) => Some(Region {
            x: x.unwrap_or(0),
            y: y.unwrap_or(0),
            width,
            height,
        }),
        _ => {
            return Err(ApiError::invalid(
                "a region needs width and height (x and y default to 0)",
            ));
        }
    };
    let scale = q.scale.unwrap_or(1.0);
    if !(scale > 0.0 && scale <= 1.0) {
        return Err(ApiError::invalid(format!(
            "scale {scale} is out of range; give a factor in (0, 1]"
        )));
    }
    x_alive(&display)?;
    let _permit = SCREENSHOTS
        .acquire()
        .await
        .map_err(|_| ApiError::internal("screenshot queue closed"))?;
    let path = app.config.desktop_framebuffer.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let frame = framebuffer::capture(&path, region)?.scale(scale);
        Ok::<_, FrameError>((frame.width, frame.height, frame.png()?))
    })
    .await
    .map_err(|e| ApiError::internal(format!("screenshot task failed: {e}")))?;
    let (width, height, png) = encoded.map_err(|e| frame_error(&app, &display, e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (
                header::HeaderName::from_static("x-image-width"),
                width.to_string(),
            ),
            (
                header::HeaderName::from_static("x-image-height"),
                height.to_string(),
            ),
        ],
        png,
    )
        .into_response())
}

/// `GET /v2/desktop/screen`: `{"width", "height"}`.
pub async fn screen_size(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    let (width, height) = screen(&app, &display)?;
    Ok(Json(json!({ "width": width, "height": height })))
}

/// `GET /v2/desktop/cursor`: `{"x", "y"}`.
pub async fn cursor(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    let out = xdotool(
        &app,
        &display,
        &["getmouselocation".into(), "--shell".into()],
    )
    .await?;
    let get = |key: &str| -> Option<i64> {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    match (get("X"), get("Y")) {
        (Some(x), Some(y)) => Ok(Json(json!({ "x": x, "y": y }))),
        _ => Err(ApiError::internal(format!(
            "xdotool getmouselocation gave no position: {out:?}"
        ))),
    }
}

/// `GET /v2/desktop/windows`: the visible windows with a title, their geometry and which one
/// has the focus.
pub async fn windows(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    // `search` exits 1 when nothing matches: an empty desktop is not an error.
    let ids = match xdotool(
        &app,
        &display,
        &[
            "search".into(),
            "--onlyvisible".into(),
            "--name".into(),
            ".".into(),
        ],
    )
    .await
    {
        Ok(out) => out,
        Err(e) if e.status == StatusCode::INTERNAL_SERVER_ERROR => String::new(),
        Err(e) => return Err(e),
    };
    let active = xdotool(&app, &display, &["getactivewindow".into()])
        .await
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let mut list = Vec::new();
    for id in ids
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .take(100)
    {
        let name = xdotool(&app, &display, &["getwindowname".into(), id.to_string()]).await;
        let geometry = xdotool(
            &app,
            &display,
            &["getwindowgeometry".into(), "--shell".into(), id.to_string()],
        )
        .await;
        let (Ok(name), Ok(geometry)) = (name, geometry) else {
            continue; // closed in the meantime
        };
        let get = |key: &str| -> Option<i64> {
            geometry
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        list.push(json!({
            "id": id,
            "title": name.trim_end_matches('\n'),
            "x": get("X"), "y": get("Y"), "width": get("WIDTH"), "height": get("HEIGHT"),
            "focused": active == Some(id),
        }));
    }
    Ok(Json(json!({ "windows": list })))
}

/// A mouse button by name.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Button {
    /// Button 1.
    #[default]
    Left,
    /// Button 2.
    Middle,
    /// Button 3.
    Right,
}

impl Button {
    fn number(self) -> &'static str {
        match self {
            Button::Left => "1",
            Button::Middle => "2",
            Button::Right => "3",
        }
    }
}

/// Body of `POST /v2/desktop/mouse/move`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    x: i64,
    y: i64,
}

/// The xdotool arguments that move the pointer to (`x`, `y`) first when both are given (checked
/// against the screen), none when neither is.
fn move_first(
    app: &App,
    display: &str,
    x: Option<i64>,
    y: Option<i64>,
) -> Result<Vec<String>, ApiError> {
    match (x, y) {
        (Some(x), Some(y)) => {
            on_screen(app, display, x, y)?;
            Ok(move_args(x, y))
        }
        (None, None) => Ok(Vec::new()),
        _ => Err(ApiError::invalid("give both x and y, or neither")),
    }
}

fn move_args(x: i64, y: i64) -> Vec<String> {
    vec![
        "mousemove".into(),
        "--sync".into(),
        x.to_string(),
        y.to_string(),
    ]
}

/// `POST /v2/desktop/mouse/move`.
pub async fn mouse_move(
    State(app): State<Arc<App>>,
    Json(req): Json<MoveRequest>,
) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    on_screen(&app, &display, req.x, req.y)?;
    let _input = INPUT.lock().await;
    xdotool(&app, &display, &move_args(req.x, req.y)).await?;
    Ok(Json(json!({ "x": req.x, "y": req.y })))
}

/// Body of `POST /v2/desktop/mouse/click`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickRequest {
    /// Where to click; the current position when both are absent.
    x: Option<i64>,
    y: Option<i64>,
    #[serde(default)]
    button: Button,
    /// 1 for a click, 2 for a double click.
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

/// `POST /v2/desktop/mouse/click`.
pub async fn mouse_click(
    State(app): State<Arc<App>>,
    Json(req): Json<ClickRequest>,
) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    if !(1..=3).contains(&req.count) {
        return Err(ApiError::invalid(format!(
            "count {} is out of range; give 1 (click), 2 (double click) or 3",
            req.count
        )));
    }
    let mut args = move_first(&app, &display, req.x, req.y)?;
    args.extend(["click".into(), "--repeat".into(), req.count.to_string()]);
    args.extend(["--delay".into(), "50".into(), req.button.number().into()]);
    let _input = INPUT.lock().await;
    xdotool(&app, &display, &args).await?;
    Ok(Json(json!({ "clicked": req.count })))
}

/// Body of `POST /v2/desktop/mouse/drag`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DragRequest {
    from: [i64; 2],
    to: [i64; 2],
    #[serde(default)]
    button: Button,
}

/// `POST /v2/desktop/mouse/drag`: press at `from`, move to `to`, release.
pub async fn mouse_drag(
    State(app): State<Arc<App>>,
    Json(req): Json<DragRequest>,
) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    on_screen(&app, &display, req.from[0], req.from[1])?;
    on_screen(&app, &display, req.to[0], req.to[1])?;
    let b = req.button.number().to_string();
    let mut args = move_args(req.from[0], req.from[1]);
    args.extend(["mousedown".into(), b.clone()]);
    args.extend(["sleep".into(), "0.05".into()]);
    args.extend(move_args(req.to[0], req.to[1]));
    args.extend(["sleep".into(), "0.05".into(), "mouseup".into(), b]);
    let _input = INPUT.lock().await;
    xdotool(&app, &display, &args).await?;
    Ok(Json(json!({ "from": req.from, "to": req.to })))
}

/// Body of `POST /v2/desktop/mouse/scroll`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrollRequest {
    x: Option<i64>,
    y: Option<i64>,
    /// `up`, `down`, `left` or `right`.
    #[serde(default = "down")]
    direction: String,
    /// Wheel steps.
    #[serde(default = "one")]
    amount: u32,
}

fn down() -> String {
    "down".into()
}

/// `POST /v2/desktop/mouse/scroll`: wheel steps (buttons 4 to 7).
pub async fn mouse_scroll(
    State(app): State<Arc<App>>,
    Json(req): Json<ScrollRequest>,
) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    let button = match req.direction.as_str() {
        "up" => "4",
        "down" => "5",
        "left" => "6",
        "right" => "7",
        other => {
            return Err(ApiError::invalid(format!(
                "scroll direction {other:?} is unknown; use up, down, left or right"
            )));
        }
    };
    if !(1..=100).contains(&req.amount) {
        return Err(ApiError::invalid(
            "amount must be between 1 and 100 wheel steps",
        ));
    }
    let mut args = move_first(&app, &display, req.x, req.y)?;
    args.extend(["click".into(), "--repeat".into(), req.amount.to_string()]);
    args.extend(["--delay".into(), "20".into(), button.into()]);
    let _input = INPUT.lock().await;
    xdotool(&app, &display, &args).await?;
    Ok(Json(
        json!({ "scrolled": req.amount, "direction": req.direction }),
    ))
}

/// Body of `POST /v2/desktop/keyboard/press`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PressRequest {
    /// Key names as xdotool takes them (`Return`, `ctrl+a`, `F5`), pressed in order.
    keys: Vec<String>,
}

/// `POST /v2/desktop/keyboard/press`.
pub async fn key_press(
    State(app): State<Arc<App>>,
    Json(req): Json<PressRequest>,
) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    if req.keys.is_empty()
        || req
            .keys
            .iter()
            .any(|k| k.trim().is_empty() || k.starts_with('-'))
    {
        return Err(ApiError::invalid(
            "keys must be a non-empty list of key names such as [\"ctrl+a\", \"Return\"]",
        ));
    }
    let mut args = vec!["key".to_string(), "--clearmodifiers".into(), "--".into()];
    args.extend(req.keys.iter().cloned());
    let _input = INPUT.lock().await;
    xdotool(&app, &display, &args).await?;
    Ok(Json(json!({ "pressed": req.keys })))
}

/// Body of `POST /v2/desktop/keyboard/type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeRequest {
    text: String,
    /// Milliseconds between keystrokes (default 5).
    delay_ms: Option<u32>,
}

/// `POST /v2/desktop/keyboard/type`: types text as keystrokes.
pub async fn key_type(
    State(app): State<Arc<App>>,
    Json(req): Json<TypeRequest>,
) -> Result<Json<Value>, ApiError> {
    let display = display(&app)?;
    if req.text.len() > MAX_TEXT {
        return Err(ApiError::invalid(format!(
            "text of {} bytes is too long; type at most {MAX_TEXT} bytes per call",
            req.text.len()
        )));
    }
    let delay = req.delay_ms.unwrap_or(5).min(1000);
    let args = vec![
        "type".to_string(),
        "--delay".into(),
        delay.to_string(),
        "--".into(),
        req.text.clone(),
    ];
    let _input = INPUT.lock().await;
    xdotool(&app, &display, &args).await?;
    Ok(Json(json!({ "typed": req.text.chars().count() })))
}
