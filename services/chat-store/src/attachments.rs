//! Image attachments: the type is checked by decoding (never by name or header), the
//! size and pixel count are limited, the image is re-encoded (which drops EXIF, text
//! chunks and anything else riding along) and a thumbnail is made; both are kept in
//! a blob store (`object_store`; a local dir by default) under generated names.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as BlobPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::config::AttachmentsConfig;
use crate::error::Error;

/// What re-encoding an upload produced.
#[derive(Debug, Clone)]
pub struct Processed {
    /// `image/png` or `image/jpeg`.
    pub content_type: &'static str,
    /// The re-encoded image.
    pub image: Vec<u8>,
    /// The re-encoded thumbnail.
    pub thumbnail: Vec<u8>,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// Decodes, checks and re-encodes an upload (CPU work: call it off the async runtime).
pub fn process(data: &[u8], config: &AttachmentsConfig) -> Result<Processed, Error> {
    if data.len() > config.max_bytes {
        return Err(Error::ResourceExhausted(format!(
            "an image may be at most {} bytes",
            config.max_bytes
        )));
    }
    let reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| Error::InvalidArgument(format!("not an image: {e}")))?;
    let format = reader.format();
    if !matches!(
        format,
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)
    ) {
        return Err(Error::InvalidArgument(
            "only PNG, JPEG, GIF and WebP images are accepted".into(),
        ));
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(config.max_dimension);
    limits.max_image_height = Some(config.max_dimension);
    limits.max_alloc = Some(256 * 1024 * 1024);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| Error::InvalidArgument(format!("the image does not decode: {e}")))?;
    let (width, height) = (decoded.width(), decoded.height());
    // Photos stay JPEG; everything else becomes PNG (lossless, keeps transparency).
    let (output, content_type) = if format == Some(ImageFormat::Jpeg) {
        (ImageFormat::Jpeg, "image/jpeg")
    } else {
        (ImageFormat::Png, "image/png")
    };
    let image = encode(&decoded, output)?;
    let thumbnail = encode(&decoded.thumbnail(config.thumbnail_size, config.thumbnail_size), output)?;
    Ok(Processed {
        content_type,
        image,
        thumbnail,
        width,
        height,
    })
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>, Error> {
    let image = if format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(image.to_rgb8())
    } else {
        image.clone()
    };
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, format)
        .map_err(|e| Error::InvalidArgument(format!("the image does not re-encode: {e}")))?;
    Ok(out.into_inner())
}

/// The blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// A local directory (created if missing).
    fn local(dir: &std::path::Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Config(format!("attachments dir {}: {e}", dir.display())))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::Config(format!("attachments dir {}: {e}", dir.display())))?;
        Ok(Self { store: Arc::new(store) })
    }

    /// The store `config` names: its S3 bucket (and prefix) when `url` is set, else a
    /// local directory (`dir`, or `data_dir/attachments`). An S3 bucket is listed once
    /// here, so a wrong name, endpoint or key stops the service at start with the cause
    /// rather than failing the first upload.
    pub async fn open(config: &AttachmentsConfig, data_dir: &std::path::Path) -> Result<Self, Error> {
        if config.url.is_empty() {
            let dir = if config.dir.as_os_str().is_empty() {
                data_dir.join("attachments")
            } else {
                config.dir.clone()
            };
            return Self::local(&dir);
        }
        let location = config.url.strip_prefix("s3://").unwrap_or_default();
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let s3 = &config.s3;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(s3.allow_http);
        for (key, value) in [
            (AmazonS3ConfigKey::Endpoint, s3.endpoint.as_str()),
            (AmazonS3ConfigKey::Region, s3.region.as_str()),
            (AmazonS3ConfigKey::AccessKeyId, s3.access_key_id.as_str()),
            (AmazonS3ConfigKey::SecretAccessKey, s3.secret_access_key.expose()),
        ] {
            if !value.is_empty() {
                builder = builder.with_config(key, value);
            }
        }
        let bucket_store = builder
            .build()
            .map_err(|e| Error::Config(format!("attachments.url {}: {e}", config.url)))?;
        let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
            Arc::new(bucket_store)
        } else {
            Arc::new(PrefixStore::new(bucket_store, prefix.trim_matches('/')))
        };
        store.list_with_delimiter(None).await.map_err(|e| {
            Error::Config(format!(
                "attachments.url {}: the bucket cannot be listed: {e}",
                config.url
            ))
        })?;
        Ok(Self { store })
    }

    /// Stores `data` under `key`.
    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), Error> {
        self.store
            .put(&BlobPath::from(key), data.into())
            .await
            .map_err(|e| Error::Unavailable(format!("blob store: {e}")))?;
        Ok(())
    }

    /// Reads `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, Error> {
        let result = self
            .store
            .get(&BlobPath::from(key))
            .await
            .map_err(|e| Error::Unavailable(format!("blob store: {e}")))?;
        result
            .bytes()
            .await
            .map_err(|e| Error::Unavailable(format!("blob store: {e}")))
    }

    /// Deletes `key`; a failure is logged (the row is already gone).
    pub async fn delete(&self, key: &str) {
        if let Err(e) = self.store.delete(&BlobPath::from(key)).await {
            tracing::warn!(key, error = %e, "blob not deleted");
        }
    }
}
