//! One HTTP request of a spooled batch, as the sink types make them ([`super::remote_write`],
//! [`super::otlp`]) and [`super::http`] sends them.

/// What a part carries, for counting what a receiver refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    Samples(u64),
    CrashReports(u64),
}

/// Reads, out of a 2xx answer, how many points a receiver refused and why.
pub type PartialReader = fn(&[u8]) -> Option<(u64, String)>;
/// Reads the receiver's message out of an error answer.
pub type ErrorReader = fn(&[u8]) -> Option<String>;

/// One request of a batch.
pub struct Part {
    pub url: String,
    pub body: Vec<u8>,
    pub headers: &'static [(&'static str, &'static str)],
    pub carries: Carries,
    /// Reads a 2xx answer for points the receiver accepted the request but refused (OTLP
    /// `partial_success`): their count and the receiver's message.
    pub partial: Option<PartialReader>,
    /// Reads the receiver's message out of an error answer (OTLP sends a protobuf
    /// `google.rpc.Status`); `None`: the body as text.
    pub error_text: Option<ErrorReader>,
}
