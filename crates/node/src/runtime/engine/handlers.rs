//! The start-up probe of a runtime handler: create and delete a container from a minimal
//! bundle, timing it.

use super::*;

/// Probe one handler: create and delete a container from a minimal bundle in its own network
/// namespace, timing it.
pub(super) async fn probe(
    rt: &OciRuntime,
    config: &EngineConfig,
    host: &Arc<dyn Host>,
) -> HandlerStatus {
    let version = rt.version().await.ok();
    let id = format!("probe-{}-{}", rt.kind().name(), std::process::id());
    let dir = config.run_dir.join("probe").join(&id);
    let netns = config.run_dir.join("probe").join(format!("{id}.netns"));
    let res: Result<Duration> = async {
        let _ = fs_err::remove_dir_all(&dir);
        for d in ["dev", "proc", "sys", "tmp"] {
            fs_err::create_dir_all(dir.join("bundle/rootfs").join(d))?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join("bundle/rootfs/probe");
            fs_err::write(&p, b"")?;
            fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        host.create_netns(&netns)?;
        let mut namespaces = vec![
            serde_json::json!({"type": "pid"}),
            serde_json::json!({"type": "ipc"}),
            serde_json::json!({"type": "uts"}),
            serde_json::json!({"type": "mount"}),
            serde_json::json!({"type": "network", "path": netns}),
        ];
        if rt.kind() != HandlerKind::Runsc {
            namespaces.push(serde_json::json!({"type": "cgroup"}));
        }
        let doc = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/probe"],
                        "env": ["PATH=/"], "cwd": "/", "noNewPrivileges": true},
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "probe",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": namespaces,
                      "cgroupsPath": format!("/{}/{id}", config.cgroup_parent),
                      "resources": {"pids": {"limit": 512}}}
        });
        let spec: oci_spec::runtime::Spec =
            serde_json::from_value(doc).map_err(|e| NodeError::json("probe spec", e))?;
        bundle::write(&spec, &dir.join("bundle"))?;
        let paths = CPaths { dir: dir.clone() };
        let t = Instant::now();
        let started = spawn_create(Arc::clone(host), rt, &id, &paths, false, None).await?;
        if started.create_exit != 0 {
            let log = fs_err::read_to_string(paths.log()).unwrap_or_default();
            return Err(NodeError::Runtime {
                handler: rt.kind().to_string(),
                op: "create".into(),
                id: id.clone(),
                status: started.create_exit,
                message: crate::runtime::clean_message(&log),
            });
        }
        rt.delete(&id).await?;
        let took = t.elapsed();
        pid_exited(started.shim_pid, Duration::from_secs(10)).await?;
        Ok(took)
    }
    .await;
    let _ = rt.delete(&id).await;
    let _ = host.remove_netns(&netns);
    let _ = host.remove_cgroup(&format!("/{}/{id}", config.cgroup_parent));
    let _ = fs_err::remove_dir_all(&dir);
    match res {
        Ok(t) => HandlerStatus {
            kind: rt.kind(),
            binary: Some(rt.binary().to_path_buf()),
            version,
            usable: true,
            probe_time: Some(t),
            error: None,
        },
        Err(e) => HandlerStatus {
            kind: rt.kind(),
            binary: Some(rt.binary().to_path_buf()),
            version,
            usable: false,
            probe_time: None,
            error: Some(e.to_string()),
        },
    }
}
