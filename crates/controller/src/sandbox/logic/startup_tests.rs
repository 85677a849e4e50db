//! The startup action `pause-at`: due when its time has come, a wait until then, ignored when
//! absent or unparsable.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::{PauseAt, pause_at};

fn meta(value: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        annotations: value.map(|v| {
            [(
                "agent-sandbox-rs.github.io/pause-at".to_owned(),
                v.to_owned(),
            )]
            .into()
        }),
        ..Default::default()
    }
}

#[test]
fn pause_at_is_due_at_its_time_and_waited_for_before() {
    let now = Time("2026-12-07T10:00:00Z".parse().unwrap());
    assert_eq!(pause_at(&meta(None), &now), None);
    assert_eq!(pause_at(&meta(Some("soon")), &now), None);
    assert_eq!(
        pause_at(&meta(Some("2026-12-07T10:00:30Z")), &now),
        Some(PauseAt::Wait(Duration::from_secs(30)))
    );
    assert_eq!(
        pause_at(&meta(Some("2026-12-07T10:00:00Z")), &now),
        Some(PauseAt::Due)
    );
    assert_eq!(
        pause_at(&meta(Some("2026-12-07T09:00:00Z")), &now),
        Some(PauseAt::Due)
    );
}
