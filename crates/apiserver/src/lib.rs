//! The embedded Kubernetes-style API server: SQLite storage, discovery, the Kubernetes verbs,
//! watch, admission from the CRD schemas, garbage collection and kubeconfig.
//!
//! This part serves the four agent-sandbox kinds and the core kinds the controllers need, and must
//! answer every call the controllers, kubectl and the SDKs make as kube-apiserver would.
#![forbid(unsafe_code)]
