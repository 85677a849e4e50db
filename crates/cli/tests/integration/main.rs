//! Integration tests of the agent-sandbox binary: the controller verb, deploy/, and end to end through up.
//!
//! One test binary per crate (each file below is a module) keeps link time and disk use low.

mod computer_use;
mod controller;
mod deploy;
mod e2e;
mod fork;
mod idle;
mod monitoring;
mod snapshot;

/// A free loopback port (nothing listens on it once this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `<dir>/kubeconfig` naming an API server on a free loopback port where nothing
/// listens; returns its path and the port.
fn unreachable_kubeconfig(dir: &std::path::Path) -> (std::path::PathBuf, u16) {
    let path = dir.join("kubeconfig");
    let port = free_port();
    fs_err::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    (path, port)
}
