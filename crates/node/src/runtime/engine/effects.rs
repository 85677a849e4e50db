//! The lifecycle's runtime effects executed against one container: its state as the runtime
//! and the shim's exit file tell it, `stop` (the effects [`lifecycle::transition`] gives for
//! [`Op::Stop`], then the wait for the exit code) and the removal from the runtime
//! ([`Op::Remove`]). The engine's operations call these with the container's handler; the
//! tests call them with a handler whose commands go to a recording host.

use super::*;

/// The state of container `c`: exited when the shim wrote its exit code, else as the runtime
/// reports it (exited when the runtime no longer knows it, with the code once the shim wrote
/// it).
pub(super) async fn container_state(
    rt: &OciRuntime,
    c: &ContainerRecord,
) -> Result<ContainerState> {
    let cp = CPaths { dir: c.dir.clone() };
    let mut st = ContainerState {
        name: c.name.clone(),
        phase: Phase::Created,
        exit_code: None,
        pid: c.container_pid,
    };
    if let Some(code) = read_exit(&cp.exit()) {
        st.phase = Phase::Exited;
        st.exit_code = Some(code);
        return Ok(st);
    }
    st.phase = match rt.state(&c.runtime_id).await? {
        None => Phase::Exited,
        Some(s) => s.status.into(),
    };
    if st.phase == Phase::Exited {
        // The shim writes the code right after reaping; give it a moment.
        for _ in 0..200 {
            if let Some(code) = read_exit(&cp.exit()) {
                st.exit_code = Some(code);
                break;
            }
            if !pid_alive(c.shim_pid) {
                st.exit_code = read_exit(&cp.exit());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(st)
}

/// Stop container `c`: SIGTERM, then SIGKILL after `grace` (see [`Op::Stop`]). Returns its
/// exit code.
pub(super) async fn stop(
    rt: &OciRuntime,
    c: &ContainerRecord,
    grace: Duration,
) -> Result<Option<i32>> {
    let rid = &c.runtime_id;
    let st = container_state(rt, c).await?;
    let plan = lifecycle::transition(
        st.phase,
        Op::Stop {
            graceful: !grace.is_zero(),
        },
    )
    .map_err(|e| lifecycle::refused(rid.as_str(), e))?;
    if plan.effects.is_empty() {
        return Ok(st.exit_code);
    }
    for effect in plan.effects {
        match effect {
            Effect::Thaw => rt.resume(rid).await?,
            Effect::Delete => rt.delete(rid).await?,
            Effect::Terminate => {
                rt.kill(rid, "TERM").await?;
                if let Some(pid) = c.container_pid
                    && pid_exited(pid, grace).await?
                {
                    return wait_exit(c, Duration::from_secs(10)).await;
                }
            }
            Effect::Kill => rt.kill(rid, "KILL").await?,
            Effect::Start | Effect::Freeze => {}
        }
    }
    wait_exit(c, Duration::from_secs(10)).await
}

/// Wait for a killed container's process to exit and for the shim to write its code.
pub(super) async fn wait_exit(c: &ContainerRecord, timeout: Duration) -> Result<Option<i32>> {
    let cp = CPaths { dir: c.dir.clone() };
    if let Some(pid) = c.container_pid
        && !pid_exited(pid, timeout).await?
    {
        return Err(NodeError::Timeout {
            sandbox: c.runtime_id.clone(),
            what: "the process to exit after SIGKILL",
            secs: timeout.as_secs_f64(),
        });
    }
    for _ in 0..500 {
        if let Some(code) = read_exit(&cp.exit()) {
            return Ok(Some(code));
        }
        if !pid_alive(c.shim_pid) {
            return Ok(read_exit(&cp.exit()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(None)
}

/// Remove container `c` from the runtime (when its handler is still usable), whatever it is
/// doing (see [`Op::Remove`]), and wait for its shim. Every effect is tried; the errors come
/// back in order.
pub(super) async fn remove_from_runtime(
    rt: Option<&OciRuntime>,
    c: &ContainerRecord,
) -> Vec<NodeError> {
    let rid = &c.runtime_id;
    let mut errors = Vec::new();
    if let Some(rt) = rt
        && let Some(st) = rt.state(rid).await.ok().flatten()
        && let Ok(plan) = lifecycle::transition(st.status.into(), Op::Remove)
    {
        for effect in plan.effects {
            match effect {
                Effect::Thaw => errors.extend(rt.resume(rid).await.err()),
                Effect::Kill => {
                    errors.extend(rt.kill(rid, "KILL").await.err());
                    if let Some(pid) = c.container_pid {
                        errors.extend(pid_exited(pid, Duration::from_secs(10)).await.err());
                    }
                }
                Effect::Delete => errors.extend(rt.delete(rid).await.err()),
                Effect::Start | Effect::Freeze | Effect::Terminate => {}
            }
        }
    }
    if let Some(shim) = c.shim_pid {
        errors.extend(pid_exited(shim, Duration::from_secs(10)).await.err());
    }
    errors
}

#[cfg(test)]
#[path = "effects_tests.rs"]
mod tests;
