//! A 1000-claim burst on a small warm pool: every claim becomes Ready on its own Sandbox (no
//! double adoption), and deleting the claims leaves no claimed Sandbox behind (no leak).
//!
//! Takes about 30 s in a debug build; `.config/nextest.toml` runs it with the machine to itself.
//! `BURST_CLAIMS` overrides the number of claims.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use agent_sandbox_api::v1beta1::{Sandbox, SandboxClaim, SandboxTemplate, SandboxWarmPool};
use common::{NS, api, eventually};
use futures::StreamExt;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_claim_burst() {
    let n: usize = std::env::var("BURST_CLAIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let pool_size = 50;
    let env = common::start().await;
    let tpl: SandboxTemplate = serde_json::from_value(json!({
        "metadata": {"name": "tpl", "namespace": NS},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "pause", "image": "pause"}]}}}
    }))
    .unwrap();
    api::<SandboxTemplate>(&env.client)
        .create(&PostParams::default(), &tpl)
        .await
        .unwrap();
    let pool: SandboxWarmPool = serde_json::from_value(json!({
        "metadata": {"name": "pool", "namespace": NS},
        "spec": {"replicas": pool_size, "sandboxTemplateRef": {"name": "tpl"}}
    }))
    .unwrap();
    let pools: Api<SandboxWarmPool> = api(&env.client);
    pools.create(&PostParams::default(), &pool).await.unwrap();
    eventually("pool ready", Duration::from_secs(120), || async {
        (pools.get("pool").await.ok()?.status?.ready_replicas == pool_size).then_some(())
    })
    .await;

    let claims: Api<SandboxClaim> = api(&env.client);
    let creates = (0..n).map(|i| {
        let claims = claims.clone();
        async move {
            let c: SandboxClaim = serde_json::from_value(json!({
                "metadata": {"name": format!("burst-{i}"), "namespace": NS},
                "spec": {"warmPoolRef": {"name": "pool"}}
            }))
            .unwrap();
            claims.create(&PostParams::default(), &c).await.unwrap();
        }
    });
    futures::stream::iter(creates)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;

    let list = eventually("all claims ready", Duration::from_secs(900), || async {
        let items = claims.list(&ListParams::default()).await.ok()?.items;
        let ready = items
            .iter()
            .filter(|c| {
                c.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        (ready == n).then_some(items)
    })
    .await;
    let names: BTreeSet<String> = list
        .iter()
        .map(|c| c.status.clone().unwrap().sandbox.name)
        .collect();
    assert_eq!(names.len(), n, "no two claims share a sandbox");
    let sbs: Api<Sandbox> = api(&env.client);
    let all = sbs.list(&ListParams::default()).await.unwrap().items;
    let claimed: Vec<&Sandbox> = all
        .iter()
        .filter(|s| {
            s.owner_references()
                .iter()
                .any(|r| r.kind == "SandboxClaim")
        })
        .collect();
    assert_eq!(claimed.len(), n, "exactly one sandbox per claim");
    assert!(claimed.iter().all(|s| s.owner_references().len() == 1));
    let warm = names.iter().filter(|s| s.starts_with("pool-")).count();
    assert!(
        warm >= pool_size as usize,
        "the pool's sandboxes were adopted ({warm})"
    );

    claims
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    eventually(
        "claimed sandboxes collected",
        Duration::from_secs(600),
        || async {
            let left = sbs
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|s| {
                    !s.owner_references()
                        .iter()
                        .any(|r| r.kind == "SandboxWarmPool")
                })
                .count();
            (left == 0).then_some(())
        },
    )
    .await;
    eventually("pool refilled", Duration::from_secs(300), || async {
        let p = pools.get("pool").await.ok()?;
        let members = sbs.list(&ListParams::default()).await.ok()?.items.len();
        (p.status?.ready_replicas == pool_size && members == pool_size as usize).then_some(())
    })
    .await;
}
