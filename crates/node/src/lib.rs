//! The embedded node agent: turns Pods bound to this machine into isolated sandboxes (images,
//! overlay rootfs, OCI bundles, runtime handlers, CNI networking, volumes, limits, probes, status).
