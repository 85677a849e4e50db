//! SPDY/3.1, as far as the server side of `kubectl port-forward` needs it: the frames and their
//! compressed header blocks ([`frame`]), and a connection that accepts the streams a client
//! opens ([`conn`]). Only the client (kubectl's `spdystream`) opens streams; the server answers.

pub mod conn;
mod dictionary;
pub mod frame;

pub use conn::{ConnectionHandle, IncomingStream, SpdyStream, serve};
pub use frame::{Codec, Decoder, Encoder, Frame, Headers, Setting, SpdyError};
