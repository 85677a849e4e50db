//! Unit tests of the sync decisions: restart rules, back-offs, init order, phases.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn two_inits_one_sidecar() -> PodRt {
    PodRt::seed(&pod(json!({
        "metadata": {"name": "p", "uid": "u"},
        "spec": {
            "initContainers": [
                {"name": "i1", "image": "x"},
                {"name": "side", "image": "x", "restartPolicy": "Always"},
                {"name": "i2", "image": "x"},
            ],
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}],
        }
    })))
}

fn terminated(code: i32) -> CState {
    CState::Terminated {
        code,
        reason: String::new(),
        message: None,
        started_at: None,
        finished_at: String::new(),
    }
}

#[test]
fn restart_policy_defaults_to_always() {
    assert_eq!(RestartPolicy::of(&pod(json!({}))), RestartPolicy::Always);
    assert_eq!(
        RestartPolicy::of(&pod(
            json!({"spec": {"containers": [], "restartPolicy": "Never"}})
        )),
        RestartPolicy::Never
    );
    assert_eq!(
        RestartPolicy::of(&pod(
            json!({"spec": {"containers": [], "restartPolicy": "OnFailure"}})
        )),
        RestartPolicy::OnFailure
    );
}

#[test]
fn regular_containers_restart_per_policy() {
    use AfterExit::*;
    use RestartPolicy::*;
    let r = |p, code| after_exit(Role::Regular, p, code);
    assert_eq!(r(Always, 0), Restart);
    assert_eq!(r(Always, 1), Restart);
    assert_eq!(r(OnFailure, 0), Finished);
    assert_eq!(r(OnFailure, 137), Restart);
    assert_eq!(r(Never, 0), Finished);
    assert_eq!(r(Never, 1), Finished);
}

#[test]
fn init_containers_complete_retry_or_fail_the_pod() {
    use AfterExit::*;
    use RestartPolicy::*;
    for p in [Always, OnFailure, Never] {
        assert_eq!(after_exit(Role::Init, p, 0), Done);
    }
    assert_eq!(after_exit(Role::Init, Always, 2), Restart);
    assert_eq!(after_exit(Role::Init, OnFailure, 2), Restart);
    assert_eq!(after_exit(Role::Init, Never, 2), PodFailed);
}

#[test]
fn sidecars_always_restart() {
    for p in [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ] {
        for code in [0, 1] {
            assert_eq!(after_exit(Role::Sidecar, p, code), AfterExit::Restart);
        }
    }
}

#[test]
fn crash_backoff_doubles_up_to_the_cap() {
    let (base, max) = (Duration::from_millis(200), Duration::from_secs(20));
    let b = |n| crash_backoff(base, max, n);
    assert_eq!(b(1), Duration::from_millis(200));
    assert_eq!(b(2), Duration::from_millis(400));
    assert_eq!(b(3), Duration::from_millis(800));
    assert_eq!(b(7), Duration::from_millis(12_800));
    assert_eq!(b(8), max);
    assert_eq!(b(1000), max);
    // A restart count seeded at 0 (never happens after an increment) is the base.
    assert_eq!(b(0), base);
    assert_eq!(error_backoff(base, max), Duration::from_millis(1600));
    assert_eq!(error_backoff(Duration::from_secs(10), max), max);
}

#[test]
fn absent_containers_wait_out_their_backoff() {
    let now = Instant::now();
    let mut c = CRt::new("a", Role::Regular, "x", false);
    assert_eq!(absent_action(&c, now), Absent::Create);

    c.backoff_until = Some(now + Duration::from_secs(3));
    c.state = CState::Waiting {
        reason: "CrashLoopBackOff".into(),
        message: None,
    };
    assert_eq!(
        absent_action(&c, now),
        Absent::CrashLoopBackOff(Duration::from_secs(3))
    );
    // Exited and removed for a restart: still in its terminated state while backing off.
    c.state = terminated(1);
    assert_eq!(
        absent_action(&c, now),
        Absent::CrashLoopBackOff(Duration::from_secs(3))
    );
    for reason in ["ErrImagePull", "ImagePullBackOff"] {
        c.state = CState::Waiting {
            reason: reason.into(),
            message: None,
        };
        assert_eq!(absent_action(&c, now), Absent::ImagePullBackOff);
    }
    c.state = CState::Waiting {
        reason: "CreateContainerError".into(),
        message: None,
    };
    assert_eq!(absent_action(&c, now), Absent::KeepError);
    // The back-off is over.
    assert_eq!(
        absent_action(&c, now + Duration::from_secs(4)),
        Absent::Create
    );
}

#[test]
fn a_regular_container_that_exited_for_good_stays_finished() {
    let now = Instant::now();
    let mut c = CRt::new("a", Role::Regular, "x", false);
    c.state = terminated(0);
    assert_eq!(absent_action(&c, now), Absent::Finished);
    // An init container in the same state is created again (its pod restarts it).
    let mut i = CRt::new("i", Role::Init, "x", true);
    i.state = terminated(1);
    assert_eq!(absent_action(&i, now), Absent::Create);
}

#[test]
fn container_action_follows_the_runtime() {
    let now = Instant::now();
    let c = CRt::new("a", Role::Regular, "x", false);
    let p = RestartPolicy::OnFailure;
    assert_eq!(
        container_action(&c, Observed::Running, p, now),
        ContainerAction::Running
    );
    assert_eq!(
        container_action(&c, Observed::Exited(Some(0)), p, now),
        ContainerAction::Exited {
            code: 0,
            then: AfterExit::Finished
        }
    );
    assert_eq!(
        container_action(&c, Observed::Exited(None), p, now),
        ContainerAction::Exited {
            code: -1,
            then: AfterExit::Restart
        }
    );
    assert_eq!(
        container_action(&c, Observed::Unknown, p, now),
        ContainerAction::Wait
    );
    assert_eq!(
        container_action(&c, Observed::Absent, p, now),
        ContainerAction::Absent(Absent::Create)
    );
}

#[test]
fn running_steps_by_role() {
    assert_eq!(running_step(Role::Init, true), Step::Waiting);
    assert_eq!(running_step(Role::Sidecar, false), Step::Waiting);
    assert_eq!(running_step(Role::Sidecar, true), Step::Running);
    assert_eq!(running_step(Role::Regular, false), Step::Running);
}

#[test]
fn init_containers_run_one_at_a_time_until_initialized() {
    assert!(after_init_step(Step::Done, false));
    assert!(after_init_step(Step::Running, false));
    assert!(!after_init_step(Step::Waiting, false));
    assert!(!after_init_step(Step::Finished, false));
    assert!(!after_init_step(Step::PodFailed, false));
    // Once initialized, a sidecar waiting for a restart does not hold the others back.
    assert!(after_init_step(Step::Waiting, true));
    assert!(!after_init_step(Step::PodFailed, true));
}

#[test]
fn initialized_once_inits_done_and_sidecars_started() {
    let mut p = two_inits_one_sidecar();
    assert!(!p.initialized);
    assert!(!initialized(&p));
    p.containers.get_mut("i1").unwrap().done = true;
    p.containers.get_mut("i2").unwrap().done = true;
    assert!(!initialized(&p), "the sidecar has not started");
    p.containers.get_mut("side").unwrap().started = true;
    assert!(initialized(&p));
    // A Pod without init containers is initialized from the start.
    let plain = PodRt::seed(&pod(json!({"spec": {"containers": [{"name": "a"}]}})));
    assert!(plain.initialized && initialized(&plain));
}

#[test]
fn pod_phase_from_the_regular_containers() {
    let mut p = two_inits_one_sidecar();
    let steps = |a, b| vec![("a".to_string(), a), ("b".to_string(), b)];
    assert_eq!(pod_phase(&p, &steps(Step::Waiting, Step::Waiting)), None);
    p.containers.get_mut("a").unwrap().container_id = Some("id".into());
    assert_eq!(
        pod_phase(&p, &steps(Step::Running, Step::Waiting)),
        Some("Running")
    );
    p.containers.get_mut("a").unwrap().state = terminated(0);
    p.containers.get_mut("b").unwrap().state = terminated(0);
    assert_eq!(
        pod_phase(&p, &steps(Step::Finished, Step::Finished)),
        Some("Succeeded")
    );
    p.containers.get_mut("b").unwrap().state = terminated(3);
    assert_eq!(
        pod_phase(&p, &steps(Step::Finished, Step::Finished)),
        Some("Failed")
    );
    // One finished, one restarting: still running.
    let mut q = two_inits_one_sidecar();
    q.containers.get_mut("b").unwrap().restarts = 1;
    assert_eq!(
        pod_phase(&q, &steps(Step::Finished, Step::Waiting)),
        Some("Running")
    );
}

#[test]
fn pod_actions() {
    let running = pod(json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}}));
    assert_eq!(pod_action(&running, false), PodAction::Run);
    assert_eq!(pod_action(&running, true), PodAction::ReportOnly);
    let done = pod(json!({"metadata": {"name": "p"}, "status": {"phase": "Failed"}}));
    assert_eq!(pod_action(&done, false), PodAction::Finished);
    let deleting = pod(json!({"metadata": {"name": "p",
        "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Succeeded"}}));
    assert_eq!(pod_action(&deleting, true), PodAction::Terminate);
}

#[test]
fn deadlines_and_grace() {
    let s = Duration::from_secs;
    assert_eq!(deadline(None, s(100)), Deadline::None);
    assert_eq!(deadline(Some(10), s(4)), Deadline::Left(s(6)));
    assert_eq!(deadline(Some(10), s(10)), Deadline::Exceeded);
    assert_eq!(deadline(Some(-5), s(0)), Deadline::Exceeded);
    assert_eq!(deletion_grace(&pod(json!({}))), s(30));
    assert_eq!(
        deletion_grace(&pod(json!({"spec": {"containers": [],
            "terminationGracePeriodSeconds": 5}}))),
        s(5)
    );
    assert_eq!(
        deletion_grace(&pod(json!({"metadata": {"deletionGracePeriodSeconds": 0},
            "spec": {"containers": [], "terminationGracePeriodSeconds": 5}}))),
        s(0)
    );
    assert_eq!(
        deletion_grace(&pod(
            json!({"metadata": {"deletionGracePeriodSeconds": 9999}})
        )),
        s(300)
    );
}

#[test]
fn terminated_keeps_the_start_time() {
    let running = CState::Running {
        started_at: "t0".into(),
    };
    match terminated_state(0, None, &running) {
        CState::Terminated {
            reason, started_at, ..
        } => {
            assert_eq!(reason, "Completed");
            assert_eq!(started_at.as_deref(), Some("t0"));
        }
        s => panic!("{s:?}"),
    }
    match terminated_state(
        137,
        Some("oom".into()),
        &CState::Waiting {
            reason: String::new(),
            message: None,
        },
    ) {
        CState::Terminated {
            reason,
            started_at,
            message,
            ..
        } => {
            assert_eq!(reason, "Error");
            assert_eq!(started_at, None);
            assert_eq!(message.as_deref(), Some("oom"));
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn kubelet_names() {
    assert_eq!(field_path(Role::Regular, "a"), "spec.containers{a}");
    assert_eq!(field_path(Role::Init, "i"), "spec.initContainers{i}");
    assert_eq!(field_path(Role::Sidecar, "s"), "spec.initContainers{s}");
    let e = NodeError::InvalidSpec {
        sandbox: "ns/p".into(),
        field: "f".into(),
        reason: "r".into(),
    };
    assert_eq!(waiting_reason(&e), "CreateContainerConfigError");
    assert_eq!(
        waiting_reason(&NodeError::NotFound("x".into())),
        "CreateContainerError"
    );
}

fn terminated_state(code: i32, message: Option<String>, previous: &CState) -> CState {
    super::terminated(code, message, previous, "t1".into())
}

#[test]
fn pause_decisions() {
    assert_eq!(pause_action(true, true, true), PauseAction::Hold);
    assert_eq!(pause_action(true, true, false), PauseAction::Hold);
    assert_eq!(pause_action(false, true, true), PauseAction::Thaw);
    assert_eq!(pause_action(true, false, true), PauseAction::Freeze);
    assert_eq!(pause_action(true, false, false), PauseAction::NotYet);
    assert_eq!(pause_action(false, false, true), PauseAction::None);
}

#[test]
fn a_pod_is_frozen_only_once_it_runs_and_its_containers_are_ready() {
    let mut rt = two_inits_one_sidecar();
    assert!(!freezable(&rt), "pending");
    rt.phase = "Running".into();
    for n in ["a", "b"] {
        let c = rt.containers.get_mut(n).unwrap();
        c.state = CState::Running {
            started_at: "t0".into(),
        };
    }
    assert!(!freezable(&rt), "running, not ready");
    rt.containers.get_mut("a").unwrap().ready = true;
    assert!(!freezable(&rt), "b is not ready");
    rt.containers.get_mut("b").unwrap().ready = true;
    assert!(freezable(&rt));
    // Init containers and sidecars do not hold it back; a regular container that ended does.
    rt.containers.get_mut("b").unwrap().state = terminated(0);
    assert!(!freezable(&rt));
}

#[test]
fn frozen_time_does_not_count_towards_a_back_off() {
    let mut rt = two_inits_one_sidecar();
    let c = rt.containers.get_mut("a").unwrap();
    let until = Instant::now() + Duration::from_millis(400);
    c.backoff_until = Some(until);
    shift_backoff(c, Duration::from_secs(5));
    assert_eq!(c.backoff_until, Some(until + Duration::from_secs(5)));
    let b = rt.containers.get_mut("b").unwrap();
    shift_backoff(b, Duration::from_secs(5));
    assert_eq!(b.backoff_until, None);
}
