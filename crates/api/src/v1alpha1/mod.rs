//! The deprecated v1alpha1 API: still served, converted to and from v1beta1 (see
//! [`crate::conversion`]). Embedded types (pod metadata, pod and PVC templates) have the same
//! shape as in v1beta1 and are shared with it.

mod claim;
mod sandbox;
mod template;
mod warmpool;

pub use claim::*;
pub use sandbox::*;
pub use template::*;
pub use warmpool::*;
