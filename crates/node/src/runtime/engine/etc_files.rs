//! The `/etc` files of a sandbox: `hosts` and `resolv.conf`.

use super::*;

/// `resolv.conf` for a DNS spec: the host's resolvers (loopback ones dropped: they cannot be
/// reached from a sandbox) unless ignored, then the Pod's, Kubernetes-style merged.
pub(super) fn resolv_conf(dns: &DnsSpec) -> String {
    let mut nameservers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    if !dns.ignore_host {
        let host = fs_err::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for line in host.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => {
                    if let Some(ns) = f.next()
                        && ns
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|a| !a.is_loopback())
                    {
                        nameservers.push(ns.to_string());
                    }
                }
                Some("search" | "domain") => searches.extend(f.map(str::to_string)),
                Some("options") => options.extend(f.map(str::to_string)),
                _ => {}
            }
        }
    }
    for ns in &dns.nameservers {
        if !nameservers.contains(ns) {
            nameservers.push(ns.clone());
        }
    }
    nameservers.truncate(3);
    for s in &dns.searches {
        if !searches.contains(s) {
            searches.push(s.clone());
        }
    }
    searches.truncate(32);
    for o in &dns.options {
        let key = o.split(':').next().unwrap_or(o);
        options.retain(|x| x.split(':').next().unwrap_or(x) != key);
        options.push(o.clone());
    }
    let mut out = String::new();
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// `/etc/hosts` of a sandbox: localhost, its pod IP with its hostname once known, the Pod's
/// host aliases.
pub(super) fn hosts_file(spec: &SandboxSpec, pod_ip: Option<Ipv4Addr>) -> String {
    let hostname = spec.hostname.clone().unwrap_or_else(|| spec.name.clone());
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = pod_ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    if !spec.host_aliases.is_empty() {
        hosts.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in &spec.host_aliases {
            hosts.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_has_the_pod_ip_once_known_and_the_aliases() {
        let mut spec = SandboxSpec::new("s1", "busybox");
        spec.name = "web".into();
        let before = hosts_file(&spec, None);
        assert_eq!(
            before,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
        spec.hostname = Some("box".into());
        spec.host_aliases = vec![("10.1.2.3".into(), vec!["a".into(), "b".into()])];
        let after = hosts_file(&spec, Some(Ipv4Addr::new(10, 88, 0, 7)));
        assert!(after.starts_with(&before));
        assert!(after.contains("10.88.0.7\tbox\n"), "{after}");
        assert!(
            after.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\ta\tb\n"),
            "{after}"
        );
    }

    #[test]
    fn resolv_conf_without_the_host_merges_the_pods_settings() {
        let dns = DnsSpec {
            ignore_host: true,
            nameservers: ["8.8.8.8", "1.1.1.1", "8.8.8.8", "9.9.9.9", "4.4.4.4"]
                .map(String::from)
                .to_vec(),
            searches: ["a.svc", "b.svc", "a.svc"].map(String::from).to_vec(),
            options: ["ndots:2", "edns0", "ndots:5"].map(String::from).to_vec(),
        };
        assert_eq!(
            resolv_conf(&dns),
            "nameserver 8.8.8.8\nnameserver 1.1.1.1\nnameserver 9.9.9.9\n\
             search a.svc b.svc\n\
             options edns0 ndots:5\n"
        );
    }

    #[test]
    fn resolv_conf_can_be_empty() {
        let dns = DnsSpec {
            ignore_host: true,
            nameservers: vec![],
            searches: vec![],
            options: vec![],
        };
        assert_eq!(resolv_conf(&dns), "");
    }
}
