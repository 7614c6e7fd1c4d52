//! A small blocking HTTP/1.1 client for the local status endpoint, over TCP or a unix
//! socket, for `vigil status`.
//!
//! Addresses are IP literals or `unix:/path`, like `status.listen`: nothing here resolves a
//! host name (vigil never calls libc `getaddrinfo`). One request per connection
//! (`Connection: close`); the answer is read to EOF and then cut to `Content-Length`, or
//! decoded from chunked transfer encoding.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where the status endpoint is.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "http://{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Target {
    /// Parses `--addr`: `IP:PORT`, `http://IP:PORT[/]`, `[v6]:PORT` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("`{s}`: a unix socket path must be absolute (unix:/path)"));
            }
            return Ok(Target::Unix(path.into()));
        }
        if s.starts_with("https://") {
            return Err(format!("`{s}`: the status endpoint speaks plain HTTP (http://IP:PORT)"));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s);
        let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
        hostport.parse::<SocketAddr>().map(Target::Tcp).map_err(|_| {
            format!("`{s}` is not IP:PORT, http://IP:PORT or unix:/path (host names are not resolved)")
        })
    }

    /// The address to reach a server listening on `listen`: a wildcard address (`0.0.0.0`,
    /// `::`) is reached on loopback.
    pub fn for_listener(listen: SocketAddr) -> Target {
        let ip = match listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Target::Tcp(SocketAddr::new(ip, listen.port()))
    }
}

/// An answer: status code, headers (names lower-cased) and body.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a request failed before an answer was read.
#[derive(Debug)]
pub enum RequestError {
    /// Could not connect: nothing listens there (or no permission).
    Connect(std::io::Error),
    /// Connected, but the exchange failed or timed out.
    Exchange(std::io::Error),
    /// Not an HTTP answer.
    Malformed(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Connect(e) => write!(f, "cannot connect: {e}"),
            RequestError::Exchange(e) if is_timeout(e) => write!(f, "no answer in time: {e}"),
            RequestError::Exchange(e) => write!(f, "request failed: {e}"),
            RequestError::Malformed(why) => write!(f, "not an HTTP answer: {why}"),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// `GET path` with an optional bearer token; `timeout` bounds the connect and each read.
pub fn get(
    target: &Target,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<Response, RequestError> {
    let host = match target {
        Target::Tcp(a) => a.to_string(),
        Target::Unix(_) => "localhost".to_string(),
    };
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vigil/{}\r\nAccept: */*\r\n{auth}Connection: close\r\n\r\n",
        vigil_actors::VERSION
    );
    let raw = match target {
        Target::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, timeout).map_err(RequestError::Connect)?;
            exchange(s, &request, timeout)
        }
        Target::Unix(p) => {
            let s = UnixStream::connect(p).map_err(RequestError::Connect)?;
            exchange(s, &request, timeout)
        }
    }?;
    parse_response(&raw).map_err(RequestError::Malformed)
}

trait Timeouts {
    fn timeouts(&self, t: Duration) -> std::io::Result<()>;
}

impl Timeouts for TcpStream {
    fn timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Timeouts for UnixStream {
    fn timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

fn exchange<S: Read + Write + Timeouts>(
    mut s: S,
    request: &str,
    timeout: Duration,
) -> Result<Vec<u8>, RequestError> {
    s.timeouts(timeout).map_err(RequestError::Exchange)?;
    s.write_all(request.as_bytes()).map_err(RequestError::Exchange)?;
    let mut raw = Vec::new();
    // A status answer is a few KiB; more than this is not an agent speaking.
    let n = s.take(MAX_RESPONSE + 1).read_to_end(&mut raw).map_err(RequestError::Exchange)?;
    if n as u64 > MAX_RESPONSE {
        return Err(RequestError::Exchange(std::io::Error::other(format!(
            "answer larger than {} MiB",
            MAX_RESPONSE >> 20
        ))));
    }
    Ok(raw)
}

/// The largest answer read, in bytes.
const MAX_RESPONSE: u64 = 64 << 20;

/// Parses a complete HTTP/1.x answer (read to EOF).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status:?}"));
    }
    let code: u16 = code.parse().map_err(|_| format!("bad status line {status:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let rest = &raw[end + 4..];
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| format!("bad Content-Length {len:?}"))?;
        if rest.len() < len {
            return Err(format!("body cut short: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { code, headers, body })
}

/// Decodes a chunked body (`SIZE[;ext]\r\nDATA\r\n` … `0\r\n\r\n`).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or("chunk size line cut short")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size line")?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if size.checked_add(2).is_none_or(|need| rest.len() < need) {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let t = |s: &str| Target::parse(s);
        assert_eq!(t("127.0.0.1:9779"), Ok(Target::Tcp("127.0.0.1:9779".parse().unwrap())));
        assert_eq!(t("http://127.0.0.1:9779/"), Ok(Target::Tcp("127.0.0.1:9779".parse().unwrap())));
        assert_eq!(t("[::1]:9"), Ok(Target::Tcp("[::1]:9".parse().unwrap())));
        assert_eq!(t("unix:/run/vigil.sock"), Ok(Target::Unix("/run/vigil.sock".into())));
        assert!(t("localhost:9779").unwrap_err().contains("host names"));
        assert!(t("unix:rel.sock").is_err());
        assert!(t("https://127.0.0.1:1").is_err());
        assert_eq!(Target::parse("http://127.0.0.1:1").unwrap().to_string(), "http://127.0.0.1:1");
        assert_eq!(
            Target::for_listener("0.0.0.0:9779".parse().unwrap()),
            Target::Tcp("127.0.0.1:9779".parse().unwrap())
        );
        assert_eq!(Target::for_listener("[::]:1".parse().unwrap()), Target::Tcp("[::1]:1".parse().unwrap()));
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-A: b\r\n\r\nokEXTRA").unwrap();
        assert_eq!((r.code, r.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(r.headers[1], ("x-a".to_string(), "b".to_string()));
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((r.code, r.body.as_slice()), (503, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 401 Unauthorized\r\n\r\nno").unwrap();
        assert_eq!((r.code, r.body.as_slice()), (401, &b"no"[..]));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn hostile_chunk_sizes_are_errors_not_panics() {
        let huge =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n0\r\n\r\n";
        assert!(parse_response(huge).is_err());
        let big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffe\r\nab";
        assert!(parse_response(big).is_err());
    }

    /// The HTTP reader of `vigil status` (and the other client commands) is total over any
    /// answer: 200,000 valid (Content-Length, chunked, to-EOF), damaged and random answers,
    /// no panic; undamaged ones give their body back.
    #[test]
    fn property_http_reader_is_total() {
        use rand::{rngs::StdRng, RngExt, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0x477B);
        for case in 0..200_000u32 {
            let body: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random_range(b' '..=b'~')).collect();
            let raw = match case % 3 {
                0 => {
                    let mut r =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                    r.extend(&body);
                    r
                }
                1 => {
                    let mut r =
                        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    for piece in body.chunks(rng.random_range(1..9)) {
                        r.extend(format!("{:x}\r\n", piece.len()).as_bytes());
                        r.extend(piece);
                        r.extend(b"\r\n");
                    }
                    r.extend(b"0\r\n\r\n");
                    r
                }
                _ => {
                    let mut r = b"HTTP/1.0 401 Unauthorized\r\nX: y\r\n\r\n".to_vec();
                    r.extend(&body);
                    r
                }
            };
            if case % 10 == 0 {
                assert_eq!(parse_response(&raw).unwrap().body, body, "case {case}");
            }
            let _ = parse_response(&vigil_actors::mutate::mutate(&mut rng, &raw));
        }
    }
}
