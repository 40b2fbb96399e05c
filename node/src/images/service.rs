//! The server side of `shoal-image/1`, mounted on the node's port: mutual TLS with a node
//! certificate of the cluster (revoked ids refused), one request per connection, at most
//! [`MAX_TRANSFERS`] connections at once (image transfers are heavy; members retry).

use super::proto::{encode, read_message, receive_chunks, send_chunks, ImageError, ImageReply, ImageRequest, MESSAGE_TIMEOUT};
use super::{ImageStore, MAX_LISTED_IMAGES};
use crate::pki::MutualTls;
use crate::frame::write_frame;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::StartHandshake;

/// Image connections served at once.
pub const MAX_TRANSFERS: usize = 4;

pub struct ImageService {
    tls: MutualTls,
    store: Arc<dyn ImageStore>,
    slots: Arc<Semaphore>,
}

impl ImageService {
    /// `tls` must offer the image ALPN (see `MutualTls::with_alpn`).
    pub fn new(tls: MutualTls, store: Arc<dyn ImageStore>) -> Arc<Self> {
        Arc::new(Self { tls, store, slots: Arc::new(Semaphore::new(MAX_TRANSFERS)) })
    }
}

impl crate::port::Service for ImageService {
    fn serve(&self, start: StartHandshake<TcpStream>, peer_addr: SocketAddr, gate: crate::port::Gate) -> crate::port::BoxFuture<()> {
        let (tls, store, slots) = (self.tls.clone(), self.store.clone(), self.slots.clone());
        Box::pin(async move {
            let (mut stream, peer) = match tls.accept_started(start).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(%peer_addr, error = %e, "image connection refused at the TLS handshake");
                    return;
                }
            };
            // Places only for peers that proved who they are.
            let Ok(_session) = gate.authenticated(peer_addr, &slots) else { return };
            if let Err(e) = serve_one(&mut stream, store.as_ref()).await {
                tracing::debug!(%peer_addr, %peer, error = %e, "image request ended with an error");
            }
        })
    }
}

async fn reply<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, r: &ImageReply) -> Result<(), ImageError> {
    write_frame(w, &encode(r)?).await.map_err(ImageError::from)
}

async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, store: &dyn ImageStore) -> Result<(), ImageError> {
    match read_message::<ImageRequest, _>(s, MESSAGE_TIMEOUT).await? {
        ImageRequest::List => {
            let mut images = store.list().await.map_err(ImageError::Local)?;
            let truncated = images.len() > MAX_LISTED_IMAGES;
            images.truncate(MAX_LISTED_IMAGES);
            reply(s, &ImageReply::Images { images, truncated }).await
        }
        ImageRequest::Fetch { reference } => {
            let found = match store.resolve(&reference).await {
                Ok(found) => found,
                Err(e) => return reply(s, &ImageReply::NotFound(format!("this node's engine did not answer: {e}"))).await,
            };
            let Some(image) = found else {
                return reply(s, &ImageReply::NotFound(format!("this node has no image {reference}"))).await;
            };
            let rx = match store.export(&image).await {
                Ok(rx) => rx,
                Err(e) => return reply(s, &ImageReply::NotFound(format!("cannot export {reference}: {e}"))).await,
            };
            reply(s, &ImageReply::Header { image }).await?;
            send_chunks(s, rx).await.map(drop)
        }
        ImageRequest::Push { image } => {
            if let Err(why) = super::validate(&image) {
                return reply(s, &ImageReply::Failed(why)).await;
            }
            if store.resolve(&image.id.0).await.map_err(ImageError::Local)?.is_some_and(|have| have.id == image.id) {
                return reply(s, &ImageReply::AlreadyHave).await;
            }
            reply(s, &ImageReply::Ready).await?;
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let (received, imported) = tokio::join!(receive_chunks(s, tx, &|_| {}), store.import(&image, rx));
            match (received, imported) {
                (Ok(_), Ok(())) => reply(s, &ImageReply::Done).await,
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => reply(s, &ImageReply::Failed(format!("loading the image failed: {e}"))).await,
            }
        }
    }
}
