//! Offline checks of `deploy/`: every YAML document parses, the kinds are the expected ones,
//! the DaemonSet runs the image the Containerfile and README build, mounts the host paths the
//! plugin needs (read-only where it only reads), installs the CNI binary into /opt/cni/bin
//! atomically (its script read as kubelet expands it: `$$` becomes `$`), and the resource name agrees everywhere it is spelled: the ConfigMap (loaded by
//! the device plugin's own config parser), every NetworkAttachmentDefinition's
//! `k8s.v1.cni.cncf.io/resourceName`, the example pod's request and its network count. The NAD
//! configs load with the CNI's own parser and carry valid IPAM.
//!
//! Each check is a function over a loaded copy of `deploy/`; `every_check_catches_a_broken_copy`
//! breaks a temporary copy in one place per check and proves that check then fails, naming
//! the problem.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One YAML document of `deploy/`.
struct Doc {
    file: PathBuf,
    index: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn at(&self) -> String {
        format!("{} (document {})", self.file.display(), self.index + 1)
    }
}

/// A loaded `deploy/` directory (the real one or a broken copy).
struct Deploy {
    dir: PathBuf,
    docs: Vec<Doc>,
}

type Check = fn(&Deploy) -> Result<(), String>;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            yaml_files(&p, out)?;
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    Ok(())
}

/// Parses every document of every YAML file under `dir` (multi-document files included).
fn load(dir: &Path) -> Result<Deploy, String> {
    let mut files = Vec::new();
    yaml_files(dir, &mut files).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    files.sort();
    if files.is_empty() {
        return Err(format!("no YAML file under {}", dir.display()));
    }
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let rel = file.strip_prefix(dir).unwrap_or(&file).to_path_buf();
        for (index, de) in yaml_serde::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(de)
                .map_err(|e| format!("{} document {}: YAML: {e}", rel.display(), index + 1))?;
            if value.is_null() {
                continue; // an empty document (a trailing `---`)
            }
            docs.push(Doc {
                file: rel.clone(),
                index,
                value,
            });
        }
    }
    Ok(Deploy {
        dir: dir.to_path_buf(),
        docs,
    })
}

impl Deploy {
    fn of_kind(&self, kind: &str) -> Vec<&Doc> {
        self.docs.iter().filter(|d| d.kind() == kind).collect()
    }
    fn one(&self, kind: &str) -> Result<&Doc, String> {
        match self.of_kind(kind).as_slice() {
            [d] => Ok(d),
            other => Err(format!(
                "expected exactly one {kind}, found {}",
                other.len()
            )),
        }
    }
    fn text(&self, rel: &str) -> Result<String, String> {
        std::fs::read_to_string(self.dir.join(rel)).map_err(|e| format!("reading {rel}: {e}"))
    }
}

fn str_of<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what}: expected a string, found {v}"))
}

fn arr<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what}: expected a list, found {v}"))
}

// ---------------------------------------------------------------------------------------------
// Kinds

const EXPECTED_KINDS: [(&str, &str); 5] = [
    ("DaemonSet", "apps/v1"),
    ("ConfigMap", "v1"),
    ("NetworkAttachmentDefinition", "k8s.cni.cncf.io/v1"),
    ("Pod", "v1"),
    ("Kustomization", "kustomize.config.k8s.io/v1beta1"),
];

fn check_kinds(d: &Deploy) -> Result<(), String> {
    for doc in &d.docs {
        let kind = doc.kind();
        let Some((_, api)) = EXPECTED_KINDS.iter().find(|(k, _)| *k == kind) else {
            return Err(format!(
                "{}: unexpected kind {kind:?} (expected one of {:?}; the plugin needs no RBAC)",
                doc.at(),
                EXPECTED_KINDS.map(|(k, _)| k)
            ));
        };
        if doc.value["apiVersion"].as_str() != Some(api) {
            return Err(format!(
                "{}: {kind} has apiVersion {}, expected {api}",
                doc.at(),
                doc.value["apiVersion"]
            ));
        }
        if kind != "Kustomization" && doc.name().is_empty() {
            return Err(format!("{}: {kind} has no metadata.name", doc.at()));
        }
    }
    for (kind, _) in EXPECTED_KINDS {
        if d.of_kind(kind).is_empty() {
            return Err(format!("no {kind} in deploy/"));
        }
    }
    for kind in ["DaemonSet", "ConfigMap", "Pod", "Kustomization"] {
        d.one(kind)?;
    }
    Ok(())
}

fn check_kustomization(d: &Deploy) -> Result<(), String> {
    let k = d.one("Kustomization")?;
    let resources = arr(&k.value["resources"], "kustomization resources")?;
    let mut listed = BTreeSet::new();
    for r in resources {
        let r = str_of(r, "kustomization resource")?;
        let path = k.file.parent().unwrap_or(Path::new("")).join(r);
        if !d.dir.join(&path).is_file() {
            return Err(format!("kustomization lists {r}, which does not exist"));
        }
        listed.insert(path);
    }
    for kind in ["DaemonSet", "ConfigMap", "NetworkAttachmentDefinition"] {
        if !d.of_kind(kind).iter().any(|doc| listed.contains(&doc.file)) {
            return Err(format!("kustomization applies no {kind}"));
        }
    }
    // The example pod is applied by hand, after the node advertises its VFs.
    for pod in d.of_kind("Pod") {
        if listed.contains(&pod.file) {
            return Err(format!(
                "kustomization applies the example pod {}",
                pod.file.display()
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// DaemonSet

fn pod_spec(ds: &Doc) -> &Value {
    &ds.value["spec"]["template"]["spec"]
}

fn container<'a>(spec: &'a Value, list: &str, name: &str) -> Result<&'a Value, String> {
    arr(&spec[list], list)?
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .ok_or_else(|| format!("no {list} entry named {name:?}"))
}

const PLUGIN: &str = "railvf-device-plugin";
const INSTALLER: &str = "install-cni";
/// Where the DaemonSet mounts host paths (`--host-root`).
const HOST_ROOT: &str = "/host";

/// `(host path, readOnly)`: `Some(true)` read-only, `Some(false)` writable, `None` either.
const PLUGIN_MOUNTS: [(&str, Option<bool>); 4] = [
    ("/sys", Some(true)),
    ("/dev/infiniband", Some(true)),
    ("/var/lib/kubelet/device-plugins", Some(false)),
    ("/var/run/k8s.cni.cncf.io/devinfo", Some(false)),
];

/// hostPath volume name → host path.
fn host_volumes(spec: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for v in arr(&spec["volumes"], "volumes")? {
        if let Some(p) = v["hostPath"]["path"].as_str() {
            out.insert(
                str_of(&v["name"], "volume name")?.to_string(),
                p.to_string(),
            );
        }
    }
    Ok(out)
}

/// The mount of host path `host` in container `c`: `(mountPath, readOnly)`.
fn mount_of(spec: &Value, c: &Value, host: &str) -> Result<Option<(String, bool)>, String> {
    let vols = host_volumes(spec)?;
    let Some((vol, _)) = vols.iter().find(|(_, p)| p.as_str() == host) else {
        return Ok(None);
    };
    for m in arr(&c["volumeMounts"], "volumeMounts")? {
        if m["name"].as_str() == Some(vol.as_str()) {
            return Ok(Some((
                str_of(&m["mountPath"], "mountPath")?.to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            )));
        }
    }
    Ok(None)
}

fn arg_value<'a>(c: &'a Value, flag: &str) -> Option<&'a str> {
    let args: Vec<&str> = c["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(eq.as_str())
            .or_else(|| (*a == flag).then(|| args.get(i + 1).copied()).flatten())
    })
}

fn check_host_mounts(d: &Deploy) -> Result<(), String> {
    let ds = d.one("DaemonSet")?;
    let spec = pod_spec(ds);
    let c = container(spec, "containers", PLUGIN)?;
    if arg_value(c, "--host-root") != Some(HOST_ROOT) {
        return Err(format!("{PLUGIN} must run with --host-root={HOST_ROOT}"));
    }
    for (host, ro) in PLUGIN_MOUNTS {
        let Some((path, read_only)) = mount_of(spec, c, host)? else {
            return Err(format!(
                "{host} is not a hostPath volume mounted in {PLUGIN}"
            ));
        };
        let want = format!("{HOST_ROOT}{host}");
        if path != want {
            return Err(format!(
                "{host} is mounted at {path}, expected {want} (below --host-root)"
            ));
        }
        match ro {
            Some(true) if !read_only => {
                return Err(format!(
                    "{host} must be mounted read-only (the plugin only reads it)"
                ));
            }
            Some(false) if read_only => {
                return Err(format!(
                    "{host} must be writable (the plugin creates files there)"
                ));
            }
            _ => {}
        }
    }
    for (flag, host) in [
        ("--kubelet-dir", "/var/lib/kubelet/device-plugins"),
        ("--devinfo-dir", "/var/run/k8s.cni.cncf.io/devinfo"),
    ] {
        let want = format!("{HOST_ROOT}{host}");
        match arg_value(c, flag) {
            Some(v) if v == want || v.starts_with(&format!("{want}/")) => {}
            other => {
                return Err(format!(
                    "{flag} is {other:?}, expected {want} or below (the hostPath mount)"
                ));
            }
        }
    }
    let env_root = arr(&c["env"], "env")?
        .iter()
        .find(|e| e["name"].as_str() == Some("RAILVF_HOST_ROOT"))
        .and_then(|e| e["value"].as_str());
    if env_root != Some(HOST_ROOT) {
        return Err(format!(
            "RAILVF_HOST_ROOT must be {HOST_ROOT} in {PLUGIN} so that `kubectl exec … inspect` reads the host"
        ));
    }
    Ok(())
}

/// What kubelet makes of a string of a container's `command` or `args` before it runs it
/// (Kubernetes' `third_party/forked/golang/expansion`): `$(NAME)` of a variable in `env`
/// becomes its value, any other `$(…)` stays as written, and `$$` becomes `$`.
fn kubelet_expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some((name, r)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = r;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's `command` and `args` as kubelet runs them, one string each.
fn run_as(c: &Value) -> Vec<(String, String)> {
    let env: BTreeMap<String, String> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect();
    ["command", "args"]
        .iter()
        .flat_map(|k| c[*k].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .map(|s| (s.to_string(), kubelet_expand(s, &env)))
        .collect()
}

/// Every container's command line is run as written: kubelet turns `$$` into `$`, so a
/// shell script's `$$` (its PID) would silently become a literal `$`.
fn check_kubelet_expansion(d: &Deploy) -> Result<(), String> {
    for doc in d.of_kind("DaemonSet").into_iter().chain(d.of_kind("Pod")) {
        let spec = if doc.kind() == "Pod" {
            &doc.value["spec"]
        } else {
            pod_spec(doc)
        };
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                for (raw, _) in run_as(c) {
                    if raw.contains("$$") {
                        return Err(format!(
                            "{}: {list} {}: kubelet reduces `$$` to `$` in command and args, so it does not run {raw:?} as written",
                            doc.at(),
                            c["name"]
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_cni_install(d: &Deploy) -> Result<(), String> {
    let ds = d.one("DaemonSet")?;
    let spec = pod_spec(ds);
    let init = container(spec, "initContainers", INSTALLER)?;
    let Some((dir, read_only)) = mount_of(spec, init, "/opt/cni/bin")? else {
        return Err(format!(
            "/opt/cni/bin is not a hostPath volume mounted in {INSTALLER}"
        ));
    };
    if read_only {
        return Err(format!("{INSTALLER} mounts /opt/cni/bin read-only"));
    }
    arr(&init["command"], "install-cni command")?;
    // The script as kubelet runs it.
    let script: String = run_as(init)
        .into_iter()
        .map(|(_, run)| run)
        .collect::<Vec<_>>()
        .join("\n");
    // Copy to a temporary name in the same directory, then rename onto <dir>/railvf.
    let lines: Vec<&str> = script.lines().map(str::trim).collect();
    let mv = lines
        .iter()
        .position(|l| l.starts_with("mv ") && l.ends_with(&format!(" {dir}/railvf")))
        .ok_or_else(|| format!("{INSTALLER} does not `mv` the binary onto {dir}/railvf"))?;
    let cp = lines
        .iter()
        .position(|l| l.starts_with("cp ") && l.contains("/usr/local/bin/railvf "))
        .ok_or_else(|| format!("{INSTALLER} does not `cp` /usr/local/bin/railvf"))?;
    if cp > mv {
        return Err(format!("{INSTALLER} renames before it copies"));
    }
    let tmp = lines
        .iter()
        .find(|l| l.starts_with("tmp="))
        .ok_or_else(|| format!("{INSTALLER} sets no temporary name (tmp=…)"))?;
    if !tmp.contains(&format!("{dir}/.railvf")) || !lines[cp].ends_with("\"$tmp\"") {
        return Err(format!(
            "{INSTALLER} must copy to a temporary name in {dir} (rename is atomic only within one file system)"
        ));
    }
    // Unique per run: two installers copying into one temporary file can rename a file the
    // other is still writing. `$$` is no help (the shell is PID 1 in its container).
    if !tmp.contains("$(mktemp ") {
        return Err(format!(
            "{INSTALLER} must make its temporary name with mktemp, found {tmp:?}"
        ));
    }
    Ok(())
}

fn check_security(d: &Deploy) -> Result<(), String> {
    let ds = d.one("DaemonSet")?;
    let spec = pod_spec(ds);
    if spec["priorityClassName"].as_str() != Some("system-node-critical") {
        return Err("the DaemonSet needs priorityClassName: system-node-critical".into());
    }
    if ds.value["metadata"]["namespace"].as_str() != Some("kube-system") {
        return Err("the DaemonSet belongs in kube-system (system-node-critical)".into());
    }
    let tolerations = arr(&spec["tolerations"], "tolerations")?;
    let gpu = tolerations.iter().any(|t| {
        t["key"].as_str() == Some("nvidia.com/gpu")
            && t["operator"].as_str() == Some("Exists")
            && t["effect"].as_str() == Some("NoSchedule")
    });
    if !gpu {
        return Err("no toleration of the nvidia.com/gpu NoSchedule taint".into());
    }
    let selector = spec["nodeSelector"]
        .as_object()
        .ok_or("the DaemonSet has no nodeSelector")?;
    if selector.get("railvf.io/dgx").and_then(Value::as_str) != Some("true") {
        return Err("nodeSelector must select railvf.io/dgx: \"true\" (a string)".into());
    }
    if spec["automountServiceAccountToken"].as_bool() != Some(false) {
        return Err("the plugin uses no API: automountServiceAccountToken must be false".into());
    }
    for (list, name) in [("containers", PLUGIN), ("initContainers", INSTALLER)] {
        let c = container(spec, list, name)?;
        let sc = &c["securityContext"];
        if sc["privileged"].as_bool() == Some(true) {
            return Err(format!("{name} is privileged; it needs no privilege"));
        }
        let drop_all = sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")));
        if !drop_all {
            return Err(format!("{name} must drop ALL capabilities"));
        }
        if sc["capabilities"]["add"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            return Err(format!("{name} adds capabilities it does not need"));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            return Err(format!("{name} must set allowPrivilegeEscalation: false"));
        }
        if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
            return Err(format!("{name} must set readOnlyRootFilesystem: true"));
        }
    }
    // A probe must reach what the plugin serves: /healthz on its --metrics-addr port.
    let c = container(spec, "containers", PLUGIN)?;
    let metrics = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.strip_prefix("--metrics-addr="))
        .find_map(|addr| addr.rsplit_once(':'))
        .map(|(h, p)| (h.trim_matches(['[', ']']).to_string(), p.to_string()));
    let metrics_port = metrics.as_ref().map(|(_, p)| p.clone());
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let p = &c[probe];
        if p.is_null() {
            continue;
        }
        let Some(port) = &metrics_port else {
            return Err(format!(
                "{PLUGIN} has a {probe}, but no --metrics-addr: /healthz is not served"
            ));
        };
        let get = &p["httpGet"];
        if get["path"].as_str() != Some("/healthz") {
            return Err(format!(
                "{PLUGIN} {probe} must GET /healthz, found {}",
                get["path"]
            ));
        }
        let probe_port = match &get["port"] {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if &probe_port != port {
            return Err(format!(
                "{PLUGIN} {probe} probes port {probe_port}, but --metrics-addr serves /healthz on {port}"
            ));
        }
        // And the address: kubelet calls `host`, or the pod IP (with host networking the
        // node's) when there is none. A loopback listener is reached only through `host`.
        if let Some((addr, _)) = &metrics {
            let probe_host = get["host"].as_str();
            let ip: Option<std::net::IpAddr> = addr.parse().ok();
            let reached = match ip {
                Some(ip) if ip.is_unspecified() => true,
                Some(ip) if ip.is_loopback() => probe_host == Some(addr.as_str()),
                _ => probe_host.is_none_or(|h| h == addr),
            };
            if !reached {
                return Err(format!(
                    "{PLUGIN} {probe} calls {}, but --metrics-addr serves /healthz on {addr} only",
                    probe_host.map_or("the pod IP (no host)".to_string(), |h| format!("host {h}"))
                ));
            }
        }
    }
    Ok(())
}

/// Where the README or the DaemonSet's comments tell to serve metrics on the pod IP, they also
/// say to take `host: 127.0.0.1` out of the probes (else the probes find no listener).
fn check_metrics_docs(d: &Deploy) -> Result<(), String> {
    let readme = d.text("README.md")?;
    let ds = d.text("device-plugin/daemonset.yaml")?;
    // README paragraphs, and the DaemonSet's comment blocks (consecutive `#` lines).
    let mut blocks: Vec<(&str, String)> = readme
        .split("\n\n")
        .map(|p| ("README.md", p.to_string()))
        .collect();
    let mut block = String::new();
    for line in ds.lines().chain([""]) {
        match line.trim_start().strip_prefix('#') {
            Some(text) => {
                block.push_str(text);
                block.push('\n');
            }
            None if !block.is_empty() => {
                blocks.push(("device-plugin/daemonset.yaml", std::mem::take(&mut block)));
            }
            None => {}
        }
    }
    for (file, text) in blocks {
        if text.contains("--metrics-addr=$(POD_IP)") && !text.contains("host: 127.0.0.1") {
            return Err(format!(
                "{file} says to use --metrics-addr=$(POD_IP) without saying to remove the probes' `host: 127.0.0.1`: {:?}",
                text.trim()
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Image

/// Every `-t <image>` of a build command in `text`.
fn build_tags(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "-t" || w[0] == "--tag")
        .map(|w| w[1].trim_matches(['`', '"', '\'']).to_string())
        .collect()
}

fn check_image(d: &Deploy) -> Result<(), String> {
    let ds = d.one("DaemonSet")?;
    let spec = pod_spec(ds);
    let image = str_of(
        &container(spec, "containers", PLUGIN)?["image"],
        "plugin image",
    )?;
    let init_image = str_of(
        &container(spec, "initContainers", INSTALLER)?["image"],
        "installer image",
    )?;
    if init_image != image {
        return Err(format!(
            "the init container runs {init_image} but the plugin runs {image}: the CNI binary must come from the same build"
        ));
    }
    let version = env!("CARGO_PKG_VERSION");
    if image.rsplit_once(':').map(|(_, t)| t) != Some(version) {
        return Err(format!(
            "the DaemonSet image {image} is not tagged with the workspace version {version}"
        ));
    }
    let containerfile = d.text("Containerfile")?;
    let readme = d.text("README.md")?;
    for (name, text) in [("Containerfile", &containerfile), ("README.md", &readme)] {
        let tags = build_tags(text);
        if tags.is_empty() {
            return Err(format!(
                "{name} names no image (`-t <image>` build command)"
            ));
        }
        if let Some(t) = tags.iter().find(|t| *t != image) {
            return Err(format!("{name} builds {t}, but the DaemonSet runs {image}"));
        }
    }
    let label = |key: &str| {
        containerfile.lines().find_map(|l| {
            let l = l.trim().trim_start_matches("LABEL").trim();
            l.strip_prefix(&format!("{key}=\""))
                .and_then(|v| v.split('"').next())
                .map(str::to_string)
        })
    };
    if label("org.opencontainers.image.ref.name").as_deref() != Some(image) {
        return Err(format!(
            "Containerfile label org.opencontainers.image.ref.name is {:?}, expected {image}",
            label("org.opencontainers.image.ref.name")
        ));
    }
    if label("org.opencontainers.image.version").as_deref() != Some(version) {
        return Err(format!(
            "Containerfile label org.opencontainers.image.version is {:?}, expected {version}",
            label("org.opencontainers.image.version")
        ));
    }
    if !containerfile.contains("--locked --release") {
        return Err("the Containerfile must build with --locked --release".into());
    }
    if !containerfile.contains("\"$(RAILVF_CNI_LIBC=musl scripts/build-cni.sh)\" /out/railvf") {
        return Err(
            "the Containerfile must install the CNI binary scripts/build-cni.sh builds against musl (static: it runs on the node)"
                .into(),
        );
    }
    for bin in ["railvf", "railvf-device-plugin"] {
        if !containerfile.contains(&format!("/usr/local/bin/{bin}")) {
            return Err(format!(
                "the Containerfile does not install {bin} in /usr/local/bin"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resource name, ConfigMap, NADs, pod

const RESOURCE_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";
const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// The resources (`prefix/name`) of the ConfigMap's config.json, read as plain JSON and by the
/// device plugin's own config parser (which must agree).
fn configured_resources(d: &Deploy) -> Result<Vec<String>, String> {
    let cm = d.one("ConfigMap")?;
    let text = str_of(
        &cm.value["data"]["config.json"],
        "ConfigMap data config.json",
    )?;
    let json: Value = serde_json::from_str(text)
        .map_err(|e| format!("ConfigMap config.json is not JSON: {e}"))?;
    let mut names = Vec::new();
    for r in arr(&json["resourceList"], "config.json resourceList")? {
        let prefix = r["resourcePrefix"].as_str().unwrap_or("nvidia.com");
        let name = str_of(&r["resourceName"], "resourceName")?;
        names.push(format!("{prefix}/{name}"));
    }
    let parsed = railvf_device_plugin::config::Config::parse(text, Path::new("config.json"))
        .map_err(|e| format!("the device plugin rejects the ConfigMap's config.json: {e}"))?;
    let theirs: Vec<String> = parsed.resources.iter().map(|r| r.full_name()).collect();
    if theirs != names {
        return Err(format!(
            "the device plugin reads resources {theirs:?} from config.json, plain JSON says {names:?}"
        ));
    }
    // The ConfigMap is what the plugin reads: mounted where --config points.
    let ds = d.one("DaemonSet")?;
    let spec = pod_spec(ds);
    let c = container(spec, "containers", PLUGIN)?;
    let config = arg_value(c, "--config").ok_or("the plugin has no --config argument")?;
    let (dir, file) = config.rsplit_once('/').ok_or("--config is not a path")?;
    let vol = arr(&spec["volumes"], "volumes")?
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some(cm.name()))
        .ok_or_else(|| {
            format!(
                "the ConfigMap {} is not a volume of the DaemonSet",
                cm.name()
            )
        })?;
    let mounted = arr(&c["volumeMounts"], "volumeMounts")?
        .iter()
        .any(|m| m["name"] == vol["name"] && m["mountPath"].as_str() == Some(dir));
    let has_key = vol["configMap"]["items"].as_array().is_none_or(|items| {
        items
            .iter()
            .any(|i| i["key"].as_str() == Some("config.json") && i["path"].as_str() == Some(file))
    });
    if !mounted || !has_key || file != "config.json" {
        return Err(format!(
            "--config {config} is not the ConfigMap's config.json mounted at {dir}"
        ));
    }
    Ok(names)
}

fn nad_resource(nad: &Doc) -> Result<&str, String> {
    str_of(
        &nad.value["metadata"]["annotations"][RESOURCE_ANNOTATION],
        &format!("{} annotation {RESOURCE_ANNOTATION}", nad.at()),
    )
}

fn check_resource_names(d: &Deploy) -> Result<(), String> {
    let resources = configured_resources(d)?;
    if resources != ["nvidia.com/dgx_h200_vfs"] {
        return Err(format!(
            "the ConfigMap advertises {resources:?}, expected [\"nvidia.com/dgx_h200_vfs\"]"
        ));
    }
    for nad in d.of_kind("NetworkAttachmentDefinition") {
        let r = nad_resource(nad)?;
        if !resources.iter().any(|x| x == r) {
            return Err(format!(
                "NAD {} asks for resource {r}, which the ConfigMap does not advertise ({resources:?})",
                nad.name()
            ));
        }
    }
    // The pod: one VF per attachment, the resource of each attachment's NAD.
    let pod = d.one("Pod")?;
    let ns = pod.value["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let mut wanted: BTreeMap<String, u64> = BTreeMap::new();
    for (name, _) in pod_networks(pod)? {
        let nad = d
            .of_kind("NetworkAttachmentDefinition")
            .into_iter()
            .find(|n| {
                n.name() == name
                    && n.value["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        == ns
            })
            .ok_or_else(|| format!("the pod attaches network {name}, no such NAD in {ns}"))?;
        *wanted.entry(nad_resource(nad)?.to_string()).or_default() += 1;
    }
    let containers = arr(&pod.value["spec"]["containers"], "pod containers")?;
    for (resource, n) in &wanted {
        let mut total = 0;
        for c in containers {
            let limit = quantity(&c["resources"]["limits"][resource.as_str()])?;
            let request = quantity(&c["resources"]["requests"][resource.as_str()])?;
            if request.is_some() && request != limit {
                return Err(format!(
                    "{resource}: requests {request:?} and limits {limit:?} differ (extended resources need them equal)"
                ));
            }
            total += limit.unwrap_or(0);
        }
        if total != *n {
            return Err(format!(
                "the pod requests {total} {resource} but attaches {n} networks of that resource: Multus gives each attachment one device"
            ));
        }
    }
    if wanted.is_empty() {
        return Err("the pod attaches no railvf network".into());
    }
    let gpus: u64 = containers
        .iter()
        .map(|c| quantity(&c["resources"]["limits"]["nvidia.com/gpu"]).map(|q| q.unwrap_or(0)))
        .sum::<Result<u64, String>>()?;
    if gpus != 8 || wanted.values().sum::<u64>() != 8 {
        return Err(format!(
            "the example pod must take 8 GPUs and 8 VFs, found {gpus} GPUs and {:?}",
            wanted
        ));
    }
    Ok(())
}

/// An integer resource quantity (`8` or `"8"`).
fn quantity(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("quantity {n} is not a whole number")),
        Value::String(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("quantity {s:?} is not a whole number")),
        other => Err(format!("quantity {other} is not a number")),
    }
}

/// The pod's `k8s.v1.cni.cncf.io/networks`: `(NAD name, interface)` per attachment.
fn pod_networks(pod: &Doc) -> Result<Vec<(String, Option<String>)>, String> {
    let raw = str_of(
        &pod.value["metadata"]["annotations"][NETWORKS_ANNOTATION],
        &format!("pod annotation {NETWORKS_ANNOTATION}"),
    )?;
    let trimmed = raw.trim();
    if trimmed.starts_with('[') {
        let list: Vec<Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("{NETWORKS_ANNOTATION} is not a JSON list: {e}"))?;
        list.iter()
            .map(|n| {
                Ok((
                    str_of(&n["name"], "network name")?.to_string(),
                    n["interface"].as_str().map(str::to_string),
                ))
            })
            .collect()
    } else {
        Ok(trimmed
            .split(',')
            .map(|s| (s.trim().to_string(), None))
            .collect())
    }
}

fn check_pod(d: &Deploy) -> Result<(), String> {
    let pod = d.one("Pod")?;
    let nets = pod_networks(pod)?;
    let ifnames: BTreeSet<&str> = nets.iter().filter_map(|(_, i)| i.as_deref()).collect();
    if ifnames.len() != nets.len() {
        return Err(format!(
            "the pod's {} attachments need distinct interface names, found {ifnames:?}",
            nets.len()
        ));
    }
    for c in arr(&pod.value["spec"]["containers"], "pod containers")? {
        let caps = c["securityContext"]["capabilities"]["add"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !caps.iter().any(|x| x.as_str() == Some("IPC_LOCK")) {
            return Err(format!(
                "container {} lacks the IPC_LOCK capability (RDMA pins memory)",
                c["name"]
            ));
        }
    }
    Ok(())
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/len)"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(ip) & !mask != 0 {
        return Err(format!("{s:?} has host bits set"));
    }
    if len > 30 {
        return Err(format!("{s:?} is too small for 8 VFs per pod"));
    }
    Ok((ip, len))
}

fn in_subnet(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net)
}

fn check_ipam(ipam: &Value, at: &str) -> Result<(), String> {
    match ipam["type"].as_str() {
        Some("whereabouts") => {
            parse_cidr(str_of(&ipam["range"], &format!("{at}: whereabouts range"))?)
                .map_err(|e| format!("{at}: whereabouts range {e}"))?;
        }
        Some("host-local") => {
            let ranges = arr(&ipam["ranges"], &format!("{at}: host-local ranges"))?;
            if ranges.is_empty() {
                return Err(format!("{at}: host-local has no ranges"));
            }
            for set in ranges {
                for r in arr(set, &format!("{at}: host-local range set"))? {
                    let subnet = parse_cidr(str_of(&r["subnet"], &format!("{at}: subnet"))?)
                        .map_err(|e| format!("{at}: subnet {e}"))?;
                    for key in ["rangeStart", "rangeEnd", "gateway"] {
                        if let Some(v) = r[key].as_str() {
                            let ip: Ipv4Addr =
                                v.parse().map_err(|e| format!("{at}: {key} {v:?}: {e}"))?;
                            if !in_subnet(ip, subnet) {
                                return Err(format!("{at}: {key} {ip} is outside {}", r["subnet"]));
                            }
                        }
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "{at}: ipam.type is {other:?}, expected \"whereabouts\" or \"host-local\""
            ));
        }
    }
    Ok(())
}

fn check_nads(d: &Deploy) -> Result<(), String> {
    for nad in d.of_kind("NetworkAttachmentDefinition") {
        let at = format!("NAD {}", nad.name());
        let text = str_of(&nad.value["spec"]["config"], &format!("{at} spec.config"))?;
        let conf: Value =
            serde_json::from_str(text).map_err(|e| format!("{at}: config is not JSON: {e}"))?;
        if conf["type"].as_str() != Some("railvf") {
            return Err(format!(
                "{at}: \"type\" is {}, expected \"railvf\"",
                conf["type"]
            ));
        }
        if conf["name"].as_str() != Some(nad.name()) {
            return Err(format!(
                "{at}: config \"name\" {} differs from the NAD name",
                conf["name"]
            ));
        }
        if conf["cniVersion"].as_str().is_none() {
            return Err(format!("{at}: no cniVersion"));
        }
        check_ipam(&conf["ipam"], &at)?;
        let parsed = railvf_cni::netconf::NetConf::parse(text.as_bytes())
            .map_err(|e| format!("{at}: the railvf CNI rejects its config: {e:?}"))?;
        if parsed.ipam_type.as_deref() != conf["ipam"]["type"].as_str() {
            return Err(format!(
                "{at}: the CNI reads ipam.type {:?}",
                parsed.ipam_type
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Host files

fn check_host_unit(d: &Deploy) -> Result<(), String> {
    let unit = d.text("host/railvf-setup-vfs.service")?;
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    let has = |key: &str, value: &str| {
        lines.iter().any(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .is_some_and(|v| v.split_whitespace().any(|w| w == value))
        })
    };
    for (key, value) in [
        ("Type", "oneshot"),
        ("RemainAfterExit", "yes"),
        ("DefaultDependencies", "no"),
        ("Conflicts", "shutdown.target"),
        ("After", "systemd-udev-settle.service"),
        ("Before", "kubelet.service"),
        ("Before", "network-pre.target"),
        ("WantedBy", "multi-user.target"),
    ] {
        if !has(key, value) {
            return Err(format!("railvf-setup-vfs.service lacks {key}={value}"));
        }
    }
    let exec = lines
        .iter()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .ok_or("railvf-setup-vfs.service has no ExecStart")?;
    if !exec.starts_with("/usr/local/bin/railvf-device-plugin setup-vfs")
        || !exec.contains("--write-host-config")
    {
        return Err(format!(
            "ExecStart {exec:?} is not `railvf-device-plugin setup-vfs … --write-host-config`"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

const CHECKS: [(&str, Check); 12] = [
    ("kinds", check_kinds),
    ("kustomization", check_kustomization),
    ("host_mounts", check_host_mounts),
    ("kubelet_expansion", check_kubelet_expansion),
    ("cni_install", check_cni_install),
    ("security", check_security),
    ("metrics_docs", check_metrics_docs),
    ("image", check_image),
    ("resource_names", check_resource_names),
    ("pod", check_pod),
    ("nads", check_nads),
    ("host_unit", check_host_unit),
];

#[test]
fn deploy_passes_every_check() {
    let d = load(&deploy_dir()).unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<&str> = d.docs.iter().map(Doc::kind).collect();
    eprintln!("deploy/: {} YAML documents: {kinds:?}", d.docs.len());
    let failures: Vec<String> = CHECKS
        .iter()
        .filter_map(|(name, check)| check(&d).err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "deploy/ fails:\n{}",
        failures.join("\n")
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A copy of deploy/ with `from` replaced by `to` (once, and it must be there) in `file`.
fn broken_copy(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&deploy_dir(), tmp.path());
    let path = tmp.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(from),
        "the breakage of {file} expects {from:?} in it: update this test with the manifests"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    tmp
}

#[test]
fn every_check_catches_a_broken_copy() {
    const DS: &str = "device-plugin/daemonset.yaml";
    const CM: &str = "device-plugin/configmap.yaml";
    const NAD: &str = "networks/railvf-whereabouts.yaml";
    const NAD_HL: &str = "networks/railvf-host-local.yaml";
    const POD: &str = "examples/training-pod.yaml";
    // (check, file, from, to, words the failure must contain)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "kinds",
            DS,
            "kind: DaemonSet",
            "kind: Deployment",
            "unexpected kind \"Deployment\"",
        ),
        (
            "kinds",
            CM,
            "apiVersion: v1",
            "apiVersion: v2",
            "apiVersion",
        ),
        (
            "kinds",
            POD,
            "name: railvf-training-example\n",
            "labels: {}\n",
            "no metadata.name",
        ),
        (
            "kustomization",
            "kustomization.yaml",
            "networks/railvf-whereabouts.yaml",
            "networks/nope.yaml",
            "does not exist",
        ),
        (
            "kustomization",
            "kustomization.yaml",
            "  - networks/railvf-whereabouts.yaml\n",
            "",
            "applies no NetworkAttachmentDefinition",
        ),
        (
            "host_mounts",
            DS,
            "path: /var/run/k8s.cni.cncf.io/devinfo",
            "path: /var/run/k8s.cni.cncf.io/devinf",
            "/var/run/k8s.cni.cncf.io/devinfo is not a hostPath volume",
        ),
        (
            "host_mounts",
            DS,
            "mountPath: /host/sys\n              readOnly: true",
            "mountPath: /host/sys",
            "/sys must be mounted read-only",
        ),
        (
            "host_mounts",
            DS,
            "mountPath: /host/dev/infiniband",
            "mountPath: /dev/infiniband",
            "expected /host/dev/infiniband",
        ),
        (
            "host_mounts",
            DS,
            "- name: device-plugins\n              mountPath: /host/var/lib/kubelet/device-plugins",
            "- name: device-plugins\n              mountPath: /host/var/lib/kubelet/device-plugins\n              readOnly: true",
            "must be writable",
        ),
        (
            "host_mounts",
            DS,
            "--host-root=/host",
            "--host-root=/",
            "--host-root=/host",
        ),
        (
            "host_mounts",
            DS,
            "--kubelet-dir=/host/var/lib/kubelet/device-plugins",
            "--kubelet-dir=/var/lib/kubelet/device-plugins",
            "--kubelet-dir",
        ),
        (
            "cni_install",
            DS,
            "mv -f \"$tmp\" /host/opt/cni/bin/railvf",
            "true",
            "does not `mv`",
        ),
        (
            "cni_install",
            DS,
            "tmp=\"$(mktemp /host/opt/cni/bin/.railvf.XXXXXX)\"",
            "tmp=\"$(mktemp)\"",
            "temporary name in /host/opt/cni/bin",
        ),
        (
            "cni_install",
            DS,
            "tmp=\"$(mktemp /host/opt/cni/bin/.railvf.XXXXXX)\"",
            "tmp=\"/host/opt/cni/bin/.railvf.tmp\"",
            "with mktemp",
        ),
        (
            "kubelet_expansion",
            DS,
            "tmp=\"$(mktemp /host/opt/cni/bin/.railvf.XXXXXX)\"",
            "tmp=\"/host/opt/cni/bin/.railvf.tmp.$$\"",
            "kubelet reduces `$$` to `$`",
        ),
        (
            "cni_install",
            DS,
            "path: /opt/cni/bin",
            "path: /usr/lib/cni",
            "/opt/cni/bin is not a hostPath volume",
        ),
        (
            "security",
            DS,
            "priorityClassName: system-node-critical",
            "priorityClassName: default",
            "system-node-critical",
        ),
        (
            "security",
            DS,
            "key: nvidia.com/gpu",
            "key: example.com/gpu",
            "nvidia.com/gpu",
        ),
        (
            "security",
            DS,
            "railvf.io/dgx: \"true\"",
            "railvf.io/dgx: true",
            "railvf.io/dgx",
        ),
        (
            "security",
            DS,
            "drop: [\"ALL\"]",
            "drop: []",
            "must drop ALL",
        ),
        (
            "security",
            DS,
            "allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            capabilities:\n              drop: [\"ALL\"]\n          volumeMounts:\n            - name: sys",
            "privileged: true\n            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            capabilities:\n              drop: [\"ALL\"]\n          volumeMounts:\n            - name: sys",
            "is privileged",
        ),
        (
            "security",
            DS,
            "automountServiceAccountToken: false",
            "automountServiceAccountToken: true",
            "automountServiceAccountToken",
        ),
        (
            "security",
            DS,
            "          env:\n",
            "          livenessProbe:\n            httpGet: {path: /healthz, port: 8080}\n          env:\n",
            "probes port 8080",
        ),
        (
            "security",
            DS,
            "            httpGet:\n              host: 127.0.0.1\n              path: /healthz\n              port: 9108\n            initialDelaySeconds",
            "            httpGet:\n              path: /healthz\n              port: 9108\n            initialDelaySeconds",
            "livenessProbe calls the pod IP (no host), but --metrics-addr serves /healthz on 127.0.0.1 only",
        ),
        (
            "security",
            DS,
            "--metrics-addr=127.0.0.1:9108",
            "--metrics-addr=10.0.0.7:9108",
            "calls host 127.0.0.1, but --metrics-addr serves /healthz on 10.0.0.7 only",
        ),
        (
            "metrics_docs",
            "README.md",
            ", and remove\n`host: 127.0.0.1` from both probes",
            ", and keep\nthe probes",
            "README.md says to use --metrics-addr=$(POD_IP)",
        ),
        (
            "metrics_docs",
            DS,
            ", and then\n      # remove `host: 127.0.0.1` from both probes",
            ", and then\n      # keep the probes",
            "daemonset.yaml says to use --metrics-addr=$(POD_IP)",
        ),
        (
            "image",
            DS,
            "image: ghcr.io/railvf/railvf:0.1.0\n          imagePullPolicy: IfNotPresent\n          command: [\"/usr",
            "image: ghcr.io/railvf/railvf:0.0.9\n          imagePullPolicy: IfNotPresent\n          command: [\"/usr",
            "init container runs",
        ),
        (
            "image",
            "Containerfile",
            "-t ghcr.io/railvf/railvf:0.1.0",
            "-t ghcr.io/railvf/railvf:latest",
            "Containerfile builds ghcr.io/railvf/railvf:latest",
        ),
        (
            "image",
            "README.md",
            "-t ghcr.io/railvf/railvf:0.1.0",
            "-t ghcr.io/example/railvf:0.1.0",
            "README.md builds ghcr.io/example/railvf:0.1.0",
        ),
        (
            "image",
            "Containerfile",
            "--locked --release",
            "--release",
            "--locked --release",
        ),
        (
            "image",
            "Containerfile",
            "\"$(RAILVF_CNI_LIBC=musl scripts/build-cni.sh)\" /out/railvf",
            "target/release/railvf /out/railvf",
            "scripts/build-cni.sh builds",
        ),
        (
            "image",
            "Containerfile",
            "\"$(RAILVF_CNI_LIBC=musl scripts/build-cni.sh)\" /out/railvf",
            "\"$(scripts/build-cni.sh)\" /out/railvf",
            "builds against musl",
        ),
        (
            "resource_names",
            CM,
            "\"resourceName\": \"dgx_h200_vfs\"",
            "\"resourceName\": \"dgx_h200_ib\"",
            "expected [\"nvidia.com/dgx_h200_vfs\"]",
        ),
        (
            "resource_names",
            CM,
            "\"devices\": [\"101e\"],",
            "\"devices\": [\"101e\"]",
            "not JSON",
        ),
        (
            "resource_names",
            CM,
            "\"linkTypes\": [\"infiniband\"]",
            "\"linkTypes\": [\"ib\"]",
            "device plugin rejects",
        ),
        (
            "resource_names",
            NAD,
            "k8s.v1.cni.cncf.io/resourceName: nvidia.com/dgx_h200_vfs",
            "k8s.v1.cni.cncf.io/resourceName: nvidia.com/dgx_h200_ib",
            "does not advertise",
        ),
        (
            "resource_names",
            POD,
            "          nvidia.com/dgx_h200_vfs: 8",
            "          nvidia.com/dgx_h200_vfs: 7",
            "requests 7 nvidia.com/dgx_h200_vfs but attaches 8",
        ),
        (
            "resource_names",
            POD,
            "{\"name\": \"railvf\", \"interface\": \"net8\"}",
            "{\"name\": \"railvf-rail7\", \"interface\": \"net8\"}",
            "no such NAD",
        ),
        (
            "resource_names",
            DS,
            "--config=/etc/railvf/config.json",
            "--config=/etc/railvf/other.json",
            "is not the ConfigMap's config.json",
        ),
        ("pod", POD, "add: [\"IPC_LOCK\"]", "add: []", "IPC_LOCK"),
        (
            "pod",
            POD,
            "\"interface\": \"net8\"",
            "\"interface\": \"net7\"",
            "distinct interface names",
        ),
        (
            "nads",
            NAD,
            "\"type\": \"railvf\"",
            "\"type\": \"ib-sriov\"",
            "expected \"railvf\"",
        ),
        (
            "nads",
            NAD,
            "\"range\": \"10.200.0.0/16\"",
            "\"range\": \"10.200.0.1/16\"",
            "host bits",
        ),
        (
            "nads",
            NAD,
            "\"type\": \"whereabouts\"",
            "\"type\": \"dhcpx\"",
            "ipam.type",
        ),
        (
            "nads",
            NAD_HL,
            "\"rangeEnd\": \"10.201.255.250\"",
            "\"rangeEnd\": \"10.202.0.250\"",
            "outside",
        ),
        (
            "nads",
            NAD,
            "\"linkLayer\": \"InfiniBand\"",
            "\"linkLayer\": \"IB\"",
            "railvf CNI rejects",
        ),
        (
            "nads",
            NAD,
            "\"name\": \"railvf\",",
            "\"name\": \"other\",",
            "differs from the NAD name",
        ),
        (
            "host_unit",
            "host/railvf-setup-vfs.service",
            "Before=network-pre.target kubelet.service",
            "Before=network-pre.target",
            "Before=kubelet.service",
        ),
        (
            "host_unit",
            "host/railvf-setup-vfs.service",
            "RemainAfterExit=yes",
            "RemainAfterExit=no",
            "RemainAfterExit=yes",
        ),
        (
            "host_unit",
            "host/railvf-setup-vfs.service",
            "DefaultDependencies=no",
            "DefaultDependencies=yes",
            "DefaultDependencies=no",
        ),
    ];
    let mut missed = Vec::new();
    for (check, file, from, to, words) in cases {
        let f = CHECKS
            .iter()
            .find(|(n, _)| n == check)
            .unwrap_or_else(|| panic!("no check {check}"))
            .1;
        let tmp = broken_copy(file, from, to);
        let result = load(tmp.path()).and_then(|d| f(&d));
        match result {
            Err(e) if e.contains(words) => {}
            Err(e) => missed.push(format!(
                "{check} on {file} ({from:?} -> {to:?}) failed, but without {words:?}: {e}"
            )),
            Ok(()) => missed.push(format!(
                "{check} on {file} ({from:?} -> {to:?}) still passes"
            )),
        }
    }
    // Every check is exercised by at least one breakage.
    for (name, _) in CHECKS {
        assert!(
            cases.iter().any(|c| c.0 == name),
            "check {name} has no breakage case"
        );
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

#[test]
fn broken_yaml_is_reported_with_its_file() {
    let tmp = broken_copy(
        "networks/railvf-whereabouts.yaml",
        "  name: railvf\n",
        "  name: [railvf\n",
    );
    let e = load(tmp.path()).err().expect("broken YAML must not load");
    assert!(
        e.contains("railvf-whereabouts.yaml document 1: YAML"),
        "{e}"
    );
}

#[test]
fn multi_document_files_are_read_whole() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&deploy_dir(), tmp.path());
    let one = load(tmp.path()).unwrap().docs.len();
    // Two NADs in one file, separated by `---`, plus an empty trailing document.
    let a = std::fs::read_to_string(tmp.path().join("networks/railvf-whereabouts.yaml")).unwrap();
    let b = std::fs::read_to_string(tmp.path().join("networks/railvf-host-local.yaml")).unwrap();
    std::fs::remove_file(tmp.path().join("networks/railvf-host-local.yaml")).unwrap();
    std::fs::write(
        tmp.path().join("networks/railvf-whereabouts.yaml"),
        format!("{a}---\n{b}---\n"),
    )
    .unwrap();
    let d = load(tmp.path()).unwrap();
    assert_eq!(d.docs.len(), one);
    assert_eq!(d.of_kind("NetworkAttachmentDefinition").len(), 2);
    check_nads(&d).unwrap();
}

#[test]
fn kubelet_expansion_is_modelled() {
    let env = BTreeMap::from([("POD_IP".to_string(), "10.0.0.7".to_string())]);
    for (input, want) in [
        (
            "--metrics-addr=$(POD_IP):9108",
            "--metrics-addr=10.0.0.7:9108",
        ),
        ("tmp=.railvf.$$", "tmp=.railvf.$"),
        ("$$(POD_IP)", "$(POD_IP)"),
        (
            "t=\"$(mktemp /x/.railvf.XXXXXX)\"",
            "t=\"$(mktemp /x/.railvf.XXXXXX)\"",
        ),
        ("cp a \"$tmp\"", "cp a \"$tmp\""),
        ("$(unclosed", "$(unclosed"),
        ("end$", "end$"),
    ] {
        assert_eq!(kubelet_expand(input, &env), want, "{input:?}");
    }
}
