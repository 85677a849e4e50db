//! Writing a Pod's status when it changed.

use super::*;

impl NodeAgent {
    /// Write the status if it changed since the last write.
    pub(super) async fn write_status(
        &self,
        pod: &Pod,
        api: &Api<Pod>,
        rt: &Shared<PodRt>,
    ) -> Result<(), kube::Error> {
        let latest = lock(&self.store)
            .get(&uid(pod))
            .cloned()
            .unwrap_or_else(|| pod.clone());
        let gates: Vec<(String, bool)> = latest
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .into_iter()
            .flatten()
            .map(|g| {
                let ok = latest
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == g.condition_type && c.status == "True");
                (g.condition_type.clone(), ok)
            })
            .collect();
        let status = {
            let mut r = lock(rt);
            r.update_conditions(&gates);
            let mut st = r.status();
            // Conditions owned by others (readiness gates) stay.
            let ours: HashSet<String> = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["type"].as_str().map(str::to_string))
                .collect();
            for c in latest
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
            {
                if !ours.contains(&c.type_)
                    && let Some(a) = st["conditions"].as_array_mut()
                {
                    a.push(serde_json::to_value(c).unwrap_or_default());
                }
            }
            if r.last_written.as_ref() == Some(&st) {
                return Ok(());
            }
            r.last_written = Some(st.clone());
            st
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                // Write again next time.
                lock(rt).last_written = None;
                Err(e)
            }
        }
    }
}
