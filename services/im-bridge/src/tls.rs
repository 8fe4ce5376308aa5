//! TLS for XMPP: our own tokio-xmpp connector (STARTTLS or direct TLS) so the
//! trusted roots can include an account's private CA (`ca_file`), and so every
//! failed connection attempt reaches the account loop as a link-down reason
//! instead of being retried silently inside tokio-xmpp.
//!
//! Roots are the system's (rustls-native-certs) plus the certificates of
//! `ca_file`. The server certificate must name the JID's domain. There is no
//! plaintext fallback: a server that does not offer STARTTLS fails the attempt.

use std::borrow::Cow;
use std::io;
use std::path::Path;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use sasl::common::ChannelBinding;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ProtocolVersion};
use tokio_xmpp::connect::{DnsConfig, ServerConnector};
use tokio_xmpp::jid::Jid;
use tokio_xmpp::parsers::starttls;
use tokio_xmpp::xmlstream::{
    FallibleStreamElement, PendingFeaturesRecv, ReadError, StreamHeader, Timeouts, XmppStreamElement, initiate_stream,
};

use crate::Error;

/// The client config for `ca_file` (see [`switchboard_runtime::tls::client_config`]).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    switchboard_runtime::tls::client_config(ca_file).map_err(Error::Session)
}

/// How [`XmppConnector`] secures the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain TCP, then `<starttls/>`; refused when the server does not offer it.
    StartTls,
    /// TLS from the first byte (XEP-0368).
    Direct,
}

/// A tokio-xmpp connector with our roots; reports each failed attempt on
/// `failures` (the session turns the first one into a link down).
#[derive(Clone)]
pub struct XmppConnector {
    dns: DnsConfig,
    mode: Mode,
    tls: Arc<ClientConfig>,
    failures: mpsc::UnboundedSender<String>,
}

impl std::fmt::Debug for XmppConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmppConnector")
            .field("dns", &self.dns)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl XmppConnector {
    /// A connector to `dns` in `mode` trusting `tls`'s roots; failures go to `failures`.
    pub fn new(dns: DnsConfig, mode: Mode, tls: Arc<ClientConfig>, failures: mpsc::UnboundedSender<String>) -> Self {
        Self {
            dns,
            mode,
            tls,
            failures,
        }
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        domain: &str,
    ) -> Result<(TlsStream<TcpStream>, ChannelBinding), tokio_xmpp::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{domain:?}: {e}")))?;
        let stream = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {domain} failed: {e}")))?;
        let (_, connection) = stream.get_ref();
        // RFC 9266 tls-exporter binding, as tokio-xmpp's own connectors do (TLS 1.3 only).
        let binding = match connection.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => connection
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .map(ChannelBinding::TlsExporter)
                .unwrap_or(ChannelBinding::None),
            _ => ChannelBinding::None,
        };
        Ok((stream, binding))
    }

    async fn attempt(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<BufStream<TlsStream<TcpStream>>>, ChannelBinding), tokio_xmpp::Error> {
        let domain = jid.domain().as_str();
        let tcp = self.dns.resolve().await?;
        let (tls, binding) = match self.mode {
            Mode::Direct => self.handshake(tcp, domain).await?,
            Mode::StartTls => {
                let header = StreamHeader {
                    to: Some(Cow::Borrowed(domain)),
                    from: None,
                    id: None,
                };
                let (features, mut stream) = initiate_stream(BufStream::new(tcp), ns, header, timeouts)
                    .await?
                    .recv_features::<FallibleStreamElement>()
                    .await?;
                if !features.can_starttls() {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{domain} does not offer STARTTLS (no plaintext fallback)"),
                    )
                    .into());
                }
                stream
                    .send(&XmppStreamElement::Starttls(starttls::Nonza::Request(
                        starttls::Request,
                    )))
                    .await?;
                loop {
                    match stream
                        .next()
                        .await
                        .map(|v| v.map(|v| v.into_read_error()).and_then(|v| v))
                    {
                        Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)))) => break,
                        Some(Ok(_) | Err(ReadError::SoftTimeout)) => {}
                        Some(Err(ReadError::HardError(e))) => return Err(e.into()),
                        Some(Err(ReadError::ParseError(e))) => {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e).into());
                        }
                        None | Some(Err(ReadError::StreamFooterReceived)) => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!("{domain} closed the stream instead of starting TLS"),
                            )
                            .into());
                        }
                    }
                }
                self.handshake(stream.into_inner().into_inner(), domain).await?
            }
        };
        let header = StreamHeader {
            to: Some(Cow::Borrowed(domain)),
            from: (self.mode == Mode::Direct).then(|| Cow::Owned(jid.to_bare().to_string())),
            id: None,
        };
        Ok((
            initiate_stream(BufStream::new(tls), ns, header, timeouts).await?,
            binding,
        ))
    }
}

impl ServerConnector for XmppConnector {
    type Stream = BufStream<TlsStream<TcpStream>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<Self::Stream>, ChannelBinding), tokio_xmpp::Error> {
        if self.failures.is_closed() {
            // The session this stream belonged to is gone, but tokio-xmpp's
            // connect loop only ends on success: park it rather than dial the
            // server every 30 s for as long as the server is unreachable.
            std::future::pending::<()>().await;
        }
        let result = self.attempt(jid, ns, timeouts).await;
        if let Err(e) = &result {
            let _ = self.failures.send(e.to_string());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(port: u16) -> (XmppConnector, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let tls = client_config(None).expect("system roots");
        (
            XmppConnector::new(DnsConfig::no_srv("127.0.0.1", port), Mode::Direct, tls, tx),
            rx,
        )
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            read_timeout: std::time::Duration::from_secs(5),
            response_timeout: std::time::Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_failed_attempt_is_reported() {
        switchboard_runtime::install_crypto_provider();
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let (connector, mut failures) = connector(port);
        let jid: Jid = "bot@localhost".parse().expect("jid");
        assert!(connector.connect(&jid, "jabber:client", timeouts()).await.is_err());
        assert!(failures.try_recv().is_ok(), "the failure reaches the session");
    }

    #[tokio::test]
    async fn no_connection_once_the_session_is_gone() {
        switchboard_runtime::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (connector, failures) = connector(port);
        drop(failures);
        let jid: Jid = "bot@localhost".parse().expect("jid");
        let attempt = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            connector.connect(&jid, "jabber:client", timeouts()),
        );
        assert!(attempt.await.is_err(), "the attempt is parked, not made");
        let accepted = tokio::time::timeout(std::time::Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err(), "nothing dialed the server");
    }
}
