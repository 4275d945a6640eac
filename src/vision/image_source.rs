//! Loading the images of `image_url` content parts, refusing anything unsafe.
//!
//! Sources: `data:` URIs; `http(s)` only when remote images are enabled, and then only to
//! allow-listed hosts whose every resolved address is public, checked again on each redirect hop,
//! with the connection pinned to the checked address; local paths only under a configured folder.
//! Bodies are read with a byte limit enforced while streaming and a timeout, and the format is
//! sniffed from the bytes (the Content-Type header is not trusted). Every refusal carries a reason,
//! counted by the caller in `remote_image_rejections_total{reason}`.

use base64::Engine as _;
use futures_util::StreamExt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// An image format sis accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// WebP.
    Webp,
    /// GIF.
    Gif,
}

impl ImageFormat {
    /// Recognises a format from its magic bytes.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageFormat::Jpeg)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(ImageFormat::Webp)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(ImageFormat::Gif)
        } else {
            None
        }
    }

    /// Its MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Gif => "image/gif",
        }
    }
}

/// Why an image was refused (a 400 for the client; `reason` labels the metric).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    /// Metric label: `disabled`, `scheme`, `host_not_allowed`, `private_address`, `dns`, `redirect`,
    /// `too_large`, `timeout`, `fetch_failed`, `bad_mime`, `bad_data_uri`, `local_path`, `bad_image`.
    pub reason: &'static str,
    /// What happened, for the client.
    pub message: String,
}

fn reject(reason: &'static str, message: impl Into<String>) -> Rejection {
    Rejection { reason, message: message.into() }
}

/// Host name resolution, injectable so tests can point names at chosen addresses.
pub trait Resolver: Send + Sync {
    /// Every address of `host`.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The system resolver.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.map(|a| a.ip()).collect()) })
    }
}

/// Whether an address may be fetched from: not loopback, private, link-local, multicast, unspecified,
/// shared, documentation or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// What may be loaded, from configuration.
pub struct ImagePolicy {
    /// `ALLOW_REMOTE_IMAGES`.
    pub allow_remote: bool,
    /// `REMOTE_IMAGE_HOST_ALLOWLIST`: exact host names (empty refuses every host).
    pub host_allowlist: Vec<String>,
    /// `REMOTE_IMAGE_TIMEOUT`.
    pub timeout: Duration,
    /// `MAX_REMOTE_IMAGE_BYTES` (also bounds data URIs).
    pub max_bytes: usize,
    /// `REMOTE_IMAGE_MIME_ALLOWLIST`.
    pub mime_allowlist: Vec<String>,
    /// A folder local paths may point into (`LOCAL_IMAGE_DIR`); none refuses local paths.
    pub local_dir: Option<PathBuf>,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Which resolved addresses may be connected to ([`is_public`] outside tests).
    pub address_filter: fn(IpAddr) -> bool,
}

/// A loaded image, still encoded.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Its sniffed format.
    pub format: ImageFormat,
}

impl ImagePolicy {
    /// The policy of the configuration, with the public-address filter.
    pub fn from_settings(s: &crate::config::settings::ImageSettings) -> Self {
        Self {
            allow_remote: s.allow_remote,
            host_allowlist: s.host_allowlist.clone(),
            timeout: s.timeout,
            max_bytes: s.max_bytes,
            mime_allowlist: s.mime_allowlist.clone(),
            local_dir: s.local_dir.clone(),
            max_redirects: 3,
            address_filter: is_public,
        }
    }

    fn check_format(&self, bytes: Vec<u8>) -> Result<LoadedImage, Rejection> {
        let format = ImageFormat::sniff(&bytes)
            .ok_or_else(|| reject("bad_mime", "the content is not a PNG, JPEG, WebP or GIF image"))?;
        if !self.mime_allowlist.iter().any(|m| m == format.mime()) {
            return Err(reject("bad_mime", format!("{} images are not allowed here", format.mime())));
        }
        Ok(LoadedImage { bytes, format })
    }

    /// Loads the image an `image_url.url` names.
    pub async fn load(&self, url: &str, resolver: &dyn Resolver) -> Result<LoadedImage, Rejection> {
        if let Some(rest) = url.strip_prefix("data:") {
            return self.check_format(self.data_uri(rest)?);
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            if !self.allow_remote {
                return Err(reject("disabled", "remote images are disabled on this server (ALLOW_REMOTE_IMAGES)"));
            }
            let bytes = tokio::time::timeout(self.timeout, self.fetch(url, resolver))
                .await
                .map_err(|_| reject("timeout", format!("fetching the image took longer than {:?}", self.timeout)))??;
            return self.check_format(bytes);
        }
        if let Some(scheme) = url.split_once("://").map(|(s, _)| s).filter(|s| *s != "file") {
            return Err(reject("scheme", format!("image URLs with scheme {scheme:?} are not supported")));
        }
        self.check_format(self.local(url.strip_prefix("file://").unwrap_or(url))?)
    }

    fn data_uri(&self, rest: &str) -> Result<Vec<u8>, Rejection> {
        let (meta, data) =
            rest.split_once(',').ok_or_else(|| reject("bad_data_uri", "a data URI needs a comma before its data"))?;
        if !meta.ends_with(";base64") {
            return Err(reject("bad_data_uri", "image data URIs must be base64-encoded"));
        }
        if data.len() / 4 * 3 > self.max_bytes + 3 {
            return Err(reject("too_large", format!("the image is larger than {} bytes", self.max_bytes)));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| reject("bad_data_uri", format!("the data URI is not valid base64: {e}")))?;
        if bytes.len() > self.max_bytes {
            return Err(reject("too_large", format!("the image is larger than {} bytes", self.max_bytes)));
        }
        Ok(bytes)
    }

    fn local(&self, path: &str) -> Result<Vec<u8>, Rejection> {
        let Some(root) = &self.local_dir else {
            return Err(reject("local_path", "local image paths are refused (no LOCAL_IMAGE_DIR is configured)"));
        };
        let root = root.canonicalize().map_err(|_| reject("local_path", "the local image folder does not exist"))?;
        let full = root
            .join(path.trim_start_matches('/'))
            .canonicalize()
            .map_err(|_| reject("local_path", "no such local image"))?;
        if !full.starts_with(&root) {
            return Err(reject("local_path", "the path leaves the local image folder"));
        }
        let len = std::fs::metadata(&full).map(|m| m.len() as usize).unwrap_or(usize::MAX);
        if len > self.max_bytes {
            return Err(reject("too_large", format!("the image is larger than {} bytes", self.max_bytes)));
        }
        std::fs::read(&full).map_err(|_| reject("local_path", "the local image cannot be read"))
    }

    /// Fetches with every hop checked; the connection goes to the address that was checked.
    async fn fetch(&self, url: &str, resolver: &dyn Resolver) -> Result<Vec<u8>, Rejection> {
        let mut url =
            reqwest::Url::parse(url).map_err(|e| reject("fetch_failed", format!("invalid image URL: {e}")))?;
        for _hop in 0..=self.max_redirects {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(reject("scheme", "redirects may only lead to http(s)"));
            }
            let host =
                url.host_str().ok_or_else(|| reject("fetch_failed", "the image URL has no host"))?.to_ascii_lowercase();
            if !self.host_allowlist.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
                return Err(reject("host_not_allowed", format!("host {host:?} is not in REMOTE_IMAGE_HOST_ALLOWLIST")));
            }
            let port = url.port_or_known_default().unwrap_or(80);
            let addresses = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => resolver
                    .resolve(&host, port)
                    .await
                    .map_err(|e| reject("dns", format!("cannot resolve {host}: {e}")))?,
            };
            if addresses.is_empty() {
                return Err(reject("dns", format!("{host} has no address")));
            }
            if let Some(bad) = addresses.iter().find(|a| !(self.address_filter)(**a)) {
                return Err(reject(
                    "private_address",
                    format!("{host} resolves to {bad}, which is not a public address"),
                ));
            }
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&host, SocketAddr::new(addresses[0], port))
                .build()
                .map_err(|e| reject("fetch_failed", e.to_string()))?;
            let response = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| reject("fetch_failed", format!("fetching the image failed: {e}")))?;
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| reject("redirect", "a redirect without a location"))?;
                url = url.join(location).map_err(|e| reject("redirect", format!("bad redirect location: {e}")))?;
                continue;
            }
            if !response.status().is_success() {
                return Err(reject("fetch_failed", format!("the image server answered {}", response.status())));
            }
            if response.content_length().is_some_and(|l| l as usize > self.max_bytes) {
                return Err(reject("too_large", format!("the image is larger than {} bytes", self.max_bytes)));
            }
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| reject("fetch_failed", format!("reading the image failed: {e}")))?;
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(reject("too_large", format!("the image is larger than {} bytes", self.max_bytes)));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        Err(reject("redirect", format!("more than {} redirects", self.max_redirects)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The smallest valid PNG (1×1).
    pub(crate) const PNG: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52, 0, 0, 0, 1, 0, 0, 0, 1, 8,
        6, 0, 0, 0, 0x1F, 0x15, 0xC4, 0x89, 0, 0, 0, 13, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0,
        0xF0, 0x1F, 0, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0, 0, 0, 0, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42,
        0x60, 0x82,
    ];

    struct MapResolver(HashMap<&'static str, Vec<IpAddr>>);

    impl Resolver for MapResolver {
        fn resolve<'a>(
            &'a self,
            host: &'a str,
            _: u16,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
            let found = self.0.get(host).cloned().ok_or_else(|| std::io::Error::other("unknown host"));
            Box::pin(async move { found })
        }
    }

    fn loopback_is_the_test_internet(ip: IpAddr) -> bool {
        ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || is_public(ip)
    }

    fn policy(hosts: &[&str]) -> ImagePolicy {
        ImagePolicy {
            allow_remote: true,
            host_allowlist: hosts.iter().map(|h| h.to_string()).collect(),
            timeout: Duration::from_millis(800),
            max_bytes: 1000,
            mime_allowlist: ["image/png", "image/jpeg", "image/webp", "image/gif"].map(String::from).to_vec(),
            local_dir: None,
            max_redirects: 3,
            address_filter: loopback_is_the_test_internet,
        }
    }

    /// A loopback HTTP server answering each path with a canned response; returns its port.
    async fn server(routes: Vec<(&'static str, Vec<u8>)>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: HashMap<&'static str, Vec<u8>> = routes.into_iter().collect();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                    if path == "/stall" {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return;
                    }
                    if path == "/endless" {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
                            .await;
                        let _ = socket.write_all(PNG).await;
                        for _ in 0..100 {
                            if socket.write_all(&[0u8; 512]).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    let body = routes
                        .get(path.as_str())
                        .cloned()
                        .unwrap_or_else(|| b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        port
    }

    fn ok(content_type: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn redirect(to: &str) -> Vec<u8> {
        format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    }

    async fn reason(policy: &ImagePolicy, url: &str, resolver: &dyn Resolver) -> &'static str {
        policy.load(url, resolver).await.expect_err("refused").reason
    }

    #[tokio::test]
    async fn data_uris_are_decoded_and_sniffed() {
        let p = policy(&[]);
        let r = MapResolver(HashMap::new());
        let uri = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(PNG));
        assert_eq!(p.load(&uri, &r).await.unwrap().format, ImageFormat::Png);
        // The declared type is not trusted: a "jpeg" that is a PNG loads as a PNG, text is refused.
        let lying = format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(PNG));
        assert_eq!(p.load(&lying, &r).await.unwrap().format, ImageFormat::Png);
        let text = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b"hello, not an image")
        );
        assert_eq!(reason(&p, &text, &r).await, "bad_mime");
        assert_eq!(reason(&p, "data:image/png;base64,@@@", &r).await, "bad_data_uri");
        assert_eq!(reason(&p, "data:image/png,rawdata", &r).await, "bad_data_uri");
        assert_eq!(reason(&p, "data:image/png;base64", &r).await, "bad_data_uri");
        let big =
            format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(vec![0u8; 5000]));
        assert_eq!(reason(&p, &big, &r).await, "too_large");
    }

    #[tokio::test]
    async fn remote_guards_refuse_before_connecting() {
        let r = MapResolver(HashMap::from([
            ("loop.test", vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]),
            ("ten.test", vec![IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))]),
            ("meta.test", vec![IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))]),
            ("six.test", vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]),
            (
                "mixed.test",
                vec![IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)), IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1))],
            ),
        ]));
        let strict = ImagePolicy {
            address_filter: is_public,
            ..policy(&["loop.test", "ten.test", "meta.test", "six.test", "mixed.test"])
        };
        for host in ["loop.test", "ten.test", "meta.test", "six.test", "mixed.test"] {
            assert_eq!(reason(&strict, &format!("http://{host}/a.png"), &r).await, "private_address", "{host}");
        }
        assert_eq!(reason(&strict, "http://127.0.0.1/a.png", &r).await, "host_not_allowed");
        assert_eq!(reason(&policy(&[]), "https://example.com/a.png", &r).await, "host_not_allowed", "empty allowlist");
        assert_eq!(reason(&policy(&["a.test"]), "https://example.com/a.png", &r).await, "host_not_allowed");
        let off = ImagePolicy { allow_remote: false, ..policy(&["example.com"]) };
        assert_eq!(reason(&off, "https://example.com/a.png", &r).await, "disabled");
        assert_eq!(reason(&policy(&[]), "ftp://example.com/a.png", &r).await, "scheme");
        assert_eq!(reason(&policy(&[]), "/etc/passwd", &r).await, "local_path");
    }

    #[tokio::test]
    async fn fetches_are_checked_on_every_hop_and_bounded_while_streaming() {
        let port = server(vec![
            ("/ok.png", ok("image/png", PNG)),
            ("/lie.png", ok("image/png", b"<html>not an image</html>")),
            ("/big.png", ok("image/png", &[PNG, &[0u8; 2000][..]].concat())),
            ("/to-private", redirect("http://internal.test/secret.png")),
            ("/to-ok", redirect("/ok.png")),
        ])
        .await;
        let r = MapResolver(HashMap::from([
            ("images.test", vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
            ("internal.test", vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))]),
        ]));
        let p = policy(&["images.test", "internal.test"]);
        let url = |path: &str| format!("http://images.test:{port}{path}");
        assert_eq!(p.load(&url("/ok.png"), &r).await.unwrap().format, ImageFormat::Png);
        assert_eq!(p.load(&url("/to-ok"), &r).await.unwrap().format, ImageFormat::Png);
        assert_eq!(reason(&p, &url("/to-private"), &r).await, "private_address");
        assert_eq!(reason(&p, &url("/lie.png"), &r).await, "bad_mime");
        assert_eq!(reason(&p, &url("/big.png"), &r).await, "too_large");
        assert_eq!(
            reason(&p, &url("/endless"), &r).await,
            "too_large",
            "no Content-Length: the limit holds while streaming"
        );
        assert_eq!(reason(&p, &url("/stall"), &r).await, "timeout");
        assert_eq!(reason(&p, &url("/missing.png"), &r).await, "fetch_failed");
    }

    #[test]
    fn local_paths_stay_inside_their_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cat.png"), PNG).unwrap();
        let p = ImagePolicy { local_dir: Some(dir.path().to_path_buf()), ..policy(&[]) };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = MapResolver(HashMap::new());
        assert!(rt.block_on(p.load("cat.png", &r)).is_ok());
        assert!(rt.block_on(p.load("file:///cat.png", &r)).is_ok());
        assert_eq!(rt.block_on(p.load("../../etc/passwd", &r)).unwrap_err().reason, "local_path");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any `image_url.url` string is loaded or refused with a reason, never a panic; nothing is
        /// fetched (remote images are off) and no local path is read (no image folder).
        #[test]
        fn any_url_is_loaded_or_refused(url in prop_oneof![
            ".{0,64}",
            "data:[a-z/;=+]{0,24},[A-Za-z0-9+/=]{0,64}",
            "(http|https|ftp|file)://[a-z0-9.:@/]{0,32}",
        ]) {
            let policy = ImagePolicy {
                allow_remote: false,
                host_allowlist: vec![],
                timeout: Duration::from_millis(10),
                max_bytes: 1 << 20,
                mime_allowlist: vec!["image/png".into()],
                local_dir: None,
                max_redirects: 1,
                address_filter: is_public,
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            if let Err(rejection) = runtime.block_on(policy.load(&url, &SystemResolver)) {
                prop_assert!(!rejection.reason.is_empty());
            }
        }
    }
}
