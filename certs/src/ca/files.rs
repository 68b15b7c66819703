//! The CA on disk: `<data_dir>/ca.pem` (0644) and `<data_dir>/ca.key` (0600).

use std::fs::{self, OpenOptions, Permissions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use super::{cert_der_from_pem, key_from_pem, CertificateAuthority};
use crate::error::PemSource;
use crate::Error;

/// File name of the CA certificate inside the data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the data directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Whether loading checks the key file's permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFileCheck {
    /// Refuse a key file that group or others can read, write or execute. Anyone who can read
    /// the key can impersonate every intercepted site to every client that trusts the CA.
    #[default]
    OwnerOnly,
    /// Skip the check: for setups where a group-readable key is deliberate (say, a key managed by
    /// a secrets agent with its own group). Must be asked for explicitly.
    AllowInsecure,
}

impl CertificateAuthority {
    /// Loads `ca.pem` and `ca.key` from `dir` (the configured data directory).
    pub fn load_from_dir(dir: &Path, check: KeyFileCheck) -> Result<Self, Error> {
        Self::load(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE), check)
    }

    /// Loads a CA from a certificate PEM file and a PKCS#8 key PEM file.
    ///
    /// The key file is opened once: it must be a regular file, and its permissions are checked
    /// on the open file before its contents are read from it, so the check and the read are
    /// about the same file.
    pub fn load(cert_path: &Path, key_path: &Path, check: KeyFileCheck) -> Result<Self, Error> {
        let key_pem = read_key_file(key_path, check)?;
        let cert_der = cert_der_from_pem(
            &read(cert_path)?,
            PemSource::Certificate(Some(cert_path.to_owned())),
        )?;
        let key = key_from_pem(&key_pem, PemSource::Key(Some(key_path.to_owned())))?;
        Self::new(cert_der, key)
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600) into `dir`, creating it (0700) if needed.
    ///
    /// Without `overwrite`, an existing file is an error: replacing a CA that clients trust
    /// breaks every intercepted connection until the new one is deployed. Each file is written to
    /// a temporary name and renamed into place, so a crash never leaves a truncated key.
    pub fn write_to_dir(&self, dir: &Path, overwrite: bool) -> Result<CaFiles, Error> {
        let files = CaFiles {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::Write {
                path: dir.to_owned(),
                source,
            })?;
        if !overwrite {
            for path in [&files.cert, &files.key] {
                if path.symlink_metadata().is_ok() {
                    return Err(Error::AlreadyExists { path: path.clone() });
                }
            }
        }
        // Key first: a crash in between leaves a new key with the old certificate, which loading
        // rejects as a mismatch instead of silently using a stale pair.
        write_atomically(&files.key, self.key_pem().as_bytes(), 0o600)?;
        write_atomically(&files.cert, self.cert_pem().as_bytes(), 0o644)?;
        Ok(files)
    }
}

/// Where [`CertificateAuthority::write_to_dir`] put the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// The certificate (`ca.pem`), to distribute to clients.
    pub cert: PathBuf,
    /// The private key (`ca.key`), readable by its owner only.
    pub key: PathBuf,
}

/// Reads the CA certificate file alone and checks it is a CA, without touching the key: `ca
/// export` may run as a user who can read the certificate but not the key.
pub fn read_ca_cert(path: &Path) -> Result<CertificateDer<'static>, Error> {
    super::checked_ca_cert(cert_der_from_pem(
        &read(path)?,
        PemSource::Certificate(Some(path.to_owned())),
    )?)
}

/// Reads the CA key file: a regular file, accessible by its owner only unless `check` allows
/// more.
fn read_key_file(path: &Path, check: KeyFileCheck) -> Result<String, Error> {
    let read_error = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode();
    if check == KeyFileCheck::OwnerOnly && mode & 0o077 != 0 {
        return Err(Error::InsecureKeyFile {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    Ok(text)
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `<path>.tmp` created with `mode` (then set explicitly, since the umask
/// may have narrowed or the spec may need widening), syncs it and renames it over `path`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let err = |source| Error::Write {
        path: tmp.clone(),
        source,
    };
    // A leftover from a crashed run may have any mode; never write key bytes into it.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}
