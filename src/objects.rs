//! Where finished videos live (`AURA_STORAGE_URL`): one interface, [`Objects`], over the data
//! folder (the default), another folder (one every node mounts), or an S3-compatible bucket, so
//! that any node can serve any job's video.
//!
//! The pipeline always renders into the job's local folder. With the default store (the data
//! folder itself) the video stays where it was rendered, at `jobs/<id>/output.<ext>`, and nothing
//! is copied. With any other store the worker puts the video under a per-attempt key,
//! `<prefix>/jobs/<id>/<attempt>/output.<ext>`, checks the stored size, and only then removes
//! its local copy and records the completion. The key is derived from the job id, the attempt
//! and the container, so no event has to carry it.
//!
//! Built on the `object_store` crate. Errors carry their detail for the log; callers never show
//! it to clients (it may name keys, endpoints or the store's own words).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// What `AURA_STORAGE_URL` names, parsed (see [`Location::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `file:///abs/path`: a folder (the data folder by default).
    Folder(PathBuf),
    /// `s3://bucket/prefix`: a bucket of any S3-compatible store.
    S3 { bucket: String, prefix: String },
}

/// What every refusal of `AURA_STORAGE_URL` ends with.
const USE: &str = "use file:///absolute/path or s3://bucket/prefix";

impl Location {
    /// Parses `file:///abs/path` or `s3://bucket/prefix` (the prefix may be empty). Anything
    /// else is refused with one line naming the setting and what to write instead.
    pub fn parse(url: &str) -> Result<Location, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("AURA_STORAGE_URL: not a URL; {USE}"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                // `file:///path`: an empty host, then an absolute path.
                let path = Path::new(rest);
                if !rest.starts_with('/') || !path.is_absolute() {
                    return Err(format!("AURA_STORAGE_URL: a file URL needs an absolute path; {USE}"));
                }
                if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    return Err(format!("AURA_STORAGE_URL: a file URL's path may not contain `..`; {USE}"));
                }
                Ok(Location::Folder(path.to_path_buf()))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let bucket_ok = (3..=63).contains(&bucket.len())
                    && bucket
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
                if !bucket_ok {
                    return Err(format!(
                        "AURA_STORAGE_URL: the bucket name must be 3 to 63 lowercase letters, digits, dots \
                         or hyphens; {USE}"
                    ));
                }
                let prefix = prefix.trim_matches('/');
                if !prefix.is_empty() && Key::parse(prefix).is_err() {
                    return Err(format!("AURA_STORAGE_URL: the prefix is not a plain key path; {USE}"));
                }
                Ok(Location::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
            }
            "" => Err(format!("AURA_STORAGE_URL: not a URL; {USE}")),
            other => Err(format!("AURA_STORAGE_URL: unknown scheme {other:?}; {USE}")),
        }
    }
}

/// Settings for the S3 client given in code, applied over the `AWS_*` environment (keys as
/// `object_store` names them, e.g. `aws_endpoint`, `aws_access_key_id`). Tests use it so that
/// several servers in one process need not share one environment.
#[derive(Clone, Default)]
pub struct S3Options(pub Vec<(String, String)>);

impl std::fmt::Debug for S3Options {
    // Names only: a value may be a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| k)).finish()
    }
}

/// Why a store operation failed. The detail is for the log only.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("no such object")]
    NotFound,
    #[error("the stored object has {stored} bytes but the local file has {local}")]
    SizeMismatch { stored: u64, local: u64 },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
    #[error("AURA_STORAGE_URL: {0}")]
    Setting(String),
}

fn store_error(e: object_store::Error) -> ObjectError {
    match e {
        object_store::Error::NotFound { .. } => ObjectError::NotFound,
        e => ObjectError::Store(e),
    }
}

/// A stored object's bytes, whole or a range, as a stream.
pub struct Object {
    /// The bytes this body holds, within `0..size`.
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// The store of finished videos. Cheap to clone.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// Keys start with this (empty for a folder).
    prefix: String,
    /// The store is the data folder: videos stay where they were rendered, under today's keys.
    in_place: bool,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("in_place", &self.inner.in_place).finish_non_exhaustive()
    }
}

impl Objects {
    /// Opens the store `location` names. `data_dir` must exist: a folder that is the data
    /// folder (after resolving links) keeps videos in place. A folder elsewhere is created.
    pub fn open(location: &Location, data_dir: &Path, options: &S3Options) -> Result<Objects, ObjectError> {
        let (store, prefix, in_place): (Arc<dyn ObjectStore>, String, bool) = match location {
            Location::Folder(folder) => {
                std::fs::create_dir_all(folder)?;
                let in_place = std::fs::canonicalize(folder)? == std::fs::canonicalize(data_dir)?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(folder)?;
                (Arc::new(store), String::new(), in_place)
            }
            Location::S3 { bucket, prefix } => {
                // Few quick retries inside the client: a store that stays down is the caller's to
                // wait for (a video waits with `waiting-for-storage`, retried with backoff), not a
                // request that hangs for object_store's default three minutes.
                let retry = object_store::RetryConfig {
                    max_retries: 2,
                    retry_timeout: std::time::Duration::from_secs(10),
                    ..Default::default()
                };
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
                for (key, value) in &options.0 {
                    let key = key
                        .parse()
                        .map_err(|_| ObjectError::Setting(format!("unknown S3 option {key:?}")))?;
                    builder = builder.with_config(key, value);
                }
                (Arc::new(builder.build()?), prefix.clone(), false)
            }
        };
        Ok(Objects { inner: Arc::new(Inner { store, prefix, in_place }) })
    }

    /// The data folder at `data_dir` as the store: what a server without `AURA_STORAGE_URL` uses.
    pub fn data_dir(data_dir: &Path) -> Result<Objects, ObjectError> {
        Objects::open(&Location::Folder(data_dir.to_path_buf()), data_dir, &S3Options::default())
    }

    /// Whether the store is the data folder: a rendered video is already where it belongs, and
    /// the output route serves it as a file.
    pub fn in_place(&self) -> bool {
        self.inner.in_place
    }

    /// The key of a job's video: `jobs/<id>/output.<ext>` in the data folder (as it always was),
    /// `<prefix>/jobs/<id>/<attempt>/output.<ext>` anywhere else.
    pub fn output_key(&self, job_id: Uuid, attempt: u32, ext: &str) -> Key {
        let name = format!("output.{ext}");
        if self.inner.in_place {
            self.job_key(job_id, &[&name])
        } else {
            self.job_key(job_id, &[&attempt.to_string(), &name])
        }
    }

    /// A key under the job's folder in the store: `<prefix>/jobs/<id>/<parts…>`; each part may
    /// hold `/`, which separates key segments.
    fn job_key(&self, job_id: Uuid, parts: &[&str]) -> Key {
        let id = job_id.to_string();
        let mut all: Vec<&str> = self.inner.prefix.split('/').filter(|p| !p.is_empty()).collect();
        all.extend(["jobs", id.as_str()]);
        all.extend(parts.iter().flat_map(|p| p.split('/')).filter(|p| !p.is_empty()));
        Key::from_iter(all)
    }

    /// The key of a file a stage of `attempt` left, `<prefix>/jobs/<id>/<attempt>/stages/<stage>/<path>`
    /// (`path` relative to the job's folder), or of the stage's manifest for `path` `None`:
    /// `<prefix>/jobs/<id>/<attempt>/stages/<stage>.done.json`. Only for a store that is not in place.
    pub fn stage_key(&self, job_id: Uuid, attempt: u32, stage: &str, path: Option<&str>) -> Key {
        let attempt = attempt.to_string();
        match path {
            Some(path) => self.job_key(job_id, &[&attempt, "stages", stage, path]),
            None => self.job_key(job_id, &[&attempt, "stages", &format!("{stage}.done.json")]),
        }
    }

    /// Puts `bytes` under `key` in one request.
    pub async fn put_bytes(&self, key: &Key, bytes: Vec<u8>) -> Result<(), ObjectError> {
        self.inner.store.put(key, bytes.into()).await.map_err(store_error)?;
        Ok(())
    }

    /// The whole object's bytes, for small objects such as manifests.
    pub async fn get_bytes(&self, key: &Key) -> Result<Bytes, ObjectError> {
        let result = self.inner.store.get(key).await.map_err(store_error)?;
        result.bytes().await.map_err(store_error)
    }

    /// Writes the whole object to the local file `file` (created or truncated), streaming, and
    /// syncs it. Returns the bytes written.
    pub async fn get_file(&self, key: &Key, file: &Path) -> Result<u64, ObjectError> {
        let mut body = self.get(key, None).await?.body;
        let mut out = tokio::fs::File::create(file).await?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            out.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        out.sync_all().await?;
        Ok(written)
    }

    /// Deletes every stage artifact the store holds for a job, of every attempt (the keys under
    /// `<prefix>/jobs/<id>/<attempt>/stages/`). Returns how many objects were deleted. Videos
    /// are left alone.
    pub async fn delete_stages(&self, job_id: Uuid) -> Result<usize, ObjectError> {
        let folder = self.job_key(job_id, &[]);
        let keys: Vec<Key> = self
            .keys_under(&folder)
            .await?
            .into_iter()
            .filter(|key| {
                // `<attempt>/stages/…` right under the job's folder.
                let rest: Vec<_> = key.prefix_match(&folder).map(|p| p.collect()).unwrap_or_default();
                rest.get(1).is_some_and(|p| p.as_ref() == "stages")
            })
            .collect();
        self.delete_all(&keys).await
    }

    /// Deletes everything the store holds for a job (its videos and stage artifacts, of every
    /// attempt: the keys under `<prefix>/jobs/<id>/`). Returns how many objects were deleted.
    pub async fn delete_job(&self, job_id: Uuid) -> Result<usize, ObjectError> {
        let keys = self.keys_under(&self.job_key(job_id, &[])).await?;
        self.delete_all(&keys).await
    }

    /// Every key under `folder`.
    async fn keys_under(&self, folder: &Key) -> Result<Vec<Key>, ObjectError> {
        self.inner
            .store
            .list(Some(folder))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(store_error)
    }

    /// Deletes each of `keys`; how many.
    async fn delete_all(&self, keys: &[Key]) -> Result<usize, ObjectError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(keys.len())
    }

    /// Puts the local file `file` under `key` and checks that the store holds as many bytes as
    /// the file. Returns the size.
    pub async fn put_file(&self, key: &Key, file: &Path) -> Result<u64, ObjectError> {
        let local = tokio::fs::metadata(file).await?.len();
        let mut reader = tokio::fs::File::open(file).await?;
        let mut writer = object_store::buffered::BufWriter::new(self.inner.store.clone(), key.clone());
        match tokio::io::copy(&mut reader, &mut writer).await {
            Ok(_) => writer.shutdown().await?,
            Err(e) => {
                // Abandon a multipart upload rather than leave its parts behind.
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "aborting a failed upload failed");
                }
                return Err(e.into());
            }
        }
        let stored = self.size(key).await?;
        if stored != local {
            return Err(ObjectError::SizeMismatch { stored, local });
        }
        Ok(stored)
    }

    /// The stored object's size in bytes.
    pub async fn size(&self, key: &Key) -> Result<u64, ObjectError> {
        Ok(self.inner.store.head(key).await.map_err(store_error)?.size)
    }

    /// The object's bytes in `range` (all of them for `None`), streamed. The range must lie
    /// within the object (see [`Objects::size`]).
    pub async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<Object, ObjectError> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
        let result = self.inner.store.get_opts(key, options).await.map_err(store_error)?;
        let range = result.range.clone();
        let body = result.into_stream().map_err(|e| std::io::Error::other(e.to_string())).boxed();
        Ok(Object { range, body })
    }

    /// Deletes the object; one that is already gone is not an error.
    pub async fn delete(&self, key: &Key) -> Result<(), ObjectError> {
        match self.inner.store.delete(key).await.map_err(store_error) {
            Ok(()) | Err(ObjectError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_are_a_file_path_or_a_bucket_and_nothing_else() {
        assert_eq!(Location::parse("file:///srv/aura"), Ok(Location::Folder(PathBuf::from("/srv/aura"))));
        assert_eq!(
            Location::parse("s3://videos/aura/prod/"),
            Ok(Location::S3 { bucket: "videos".into(), prefix: "aura/prod".into() })
        );
        assert_eq!(
            Location::parse("s3://videos"),
            Ok(Location::S3 { bucket: "videos".into(), prefix: "".into() })
        );
        for bad in [
            "gs://bucket/p",
            "http://host/x",
            "/srv/aura",
            "file://relative/path",
            "file:///srv/../etc",
            "s3://",
            "s3://Upper/p",
            "s3://b/p",
            "://x",
        ] {
            let e = Location::parse(bad).err().unwrap_or_default();
            assert!(e.starts_with("AURA_STORAGE_URL: ") && e.ends_with(USE), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_keep_the_data_folder_layout_and_are_per_attempt_elsewhere() -> Result<(), ObjectError> {
        let dir = tempfile::tempdir()?;
        let id = Uuid::nil();
        let home = Objects::data_dir(dir.path())?;
        assert!(home.in_place());
        assert_eq!(home.output_key(id, 2, "mp4").as_ref(), format!("jobs/{id}/output.mp4"));
        let other = tempfile::tempdir()?;
        let away = Objects::open(&Location::Folder(other.path().into()), dir.path(), &S3Options::default())?;
        assert!(!away.in_place());
        assert_eq!(away.output_key(id, 2, "webm").as_ref(), format!("jobs/{id}/2/output.webm"));
        Ok(())
    }
}
