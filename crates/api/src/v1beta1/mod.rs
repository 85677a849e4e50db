//! The v1beta1 API: the storage version, and the only version the controllers read and write.

mod claim;
mod common;
mod sandbox;
mod template;
mod warmpool;

pub use claim::*;
pub use common::*;
pub use sandbox::*;
pub use template::*;
pub use warmpool::*;
