//! Finding a cell's replicas: the cell argument (`ADDR,…`, `name=ADDR,…`, `@FILE`) and the
//! addresses DNS gives for a name.

use std::time::Duration;

use super::ClientError;

/// Longest pause between retries while the master is unknown: an election on a loopback or
/// LAN cell takes a few hundred ms, and a client should notice its end promptly. (Polling is
/// short-lived: once a replica knows no master is elected it holds a call until one is, and
/// then redirects it; the pauses only cover the moments before replicas notice a dead master.)
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(25);

/// Splits a cell argument: `ADDR,ADDR,…`, optionally prefixed with the cell's name
/// (`local=ADDR,…`, as `chubby-mount` takes it); or `@FILE`, a file with the same list
/// (separated by commas, blanks or new lines; `#` starts a comment). An address is
/// `HOST:PORT`; a host name that resolves to several addresses names several replicas
/// (see [`resolve`]).
pub fn parse_cell(s: &str) -> Result<Vec<String>, ClientError> {
    if let Some(file) = s.strip_prefix('@') {
        let text = std::fs::read_to_string(file).map_err(|e| ClientError::CellFile(format!("{file}: {e}")))?;
        let list: Vec<&str> = text
            .lines()
            .map(|l| l.split_once('#').map_or(l, |(before, _)| before))
            .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|a| !a.is_empty())
            .collect();
        if list.is_empty() {
            return Err(ClientError::CellFile(format!("{file}: no replica address in it")));
        }
        return parse_cell(&list.join(","));
    }
    let s = s.split_once('=').map_or(s, |(_, rest)| rest);
    let addrs: Vec<String> = s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if addrs.is_empty() {
        return Err(ClientError::NoAddress);
    }
    for a in &addrs {
        if a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(ClientError::BadAddress(a.clone()));
        }
    }
    Ok(addrs)
}

/// The host name each address came from when [`resolve`] looked one up (`IP:PORT` → name):
/// TLS checks a replica's certificate against the name dialled, not the address it gave.
fn names() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        std::sync::OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// The host name `addr` was found under by [`resolve`], if it was.
pub fn name_of(addr: &str) -> Option<String> {
    names().lock().expect("names").get(addr).cloned()
}

/// Expands host names into every address DNS gives for them (a cell may be published as one
/// name with an address per replica, as Chubby cells were), keeping the order and dropping
/// repeats. A name that does not resolve now is kept as it is: the connection attempt will
/// report it, and the next resolution may succeed.
pub async fn resolve(addrs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in addrs {
        if a.parse::<std::net::SocketAddr>().is_ok() {
            if !out.contains(a) {
                out.push(a.clone());
            }
            continue;
        }
        match tokio::net::lookup_host(a.as_str()).await {
            Ok(found) => {
                let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                for sa in found {
                    let s = sa.to_string();
                    names().lock().expect("names").insert(s.clone(), host.to_string());
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(addr = %a, error = %e, "could not resolve");
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_argument_forms() {
        assert_eq!(parse_cell("127.0.0.1:7001, 127.0.0.1:7002").unwrap(), vec!["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(parse_cell("local=h:1,h:2").unwrap(), vec!["h:1", "h:2"]);
        assert!(matches!(parse_cell(""), Err(ClientError::NoAddress)));
        assert!(matches!(parse_cell("nohost"), Err(ClientError::BadAddress(_))));
    }

    #[test]
    fn a_cell_file_lists_the_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cell");
        std::fs::write(&f, "# the local cell\n127.0.0.1:7001, 127.0.0.1:7002\n\n127.0.0.1:7003  # third\n").unwrap();
        let arg = format!("@{}", f.display());
        assert_eq!(parse_cell(&arg).unwrap(), vec!["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]);
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(matches!(parse_cell(&arg), Err(ClientError::CellFile(_))));
        assert!(matches!(parse_cell("@/nonexistent/cell"), Err(ClientError::CellFile(_))));
    }

    #[tokio::test]
    async fn host_names_expand_to_every_address() {
        let got = resolve(&["localhost:7001".into(), "127.0.0.1:7002".into(), "127.0.0.1:7002".into()]).await;
        assert!(got.contains(&"127.0.0.1:7001".to_string()), "{got:?}");
        assert_eq!(got.iter().filter(|a| *a == "127.0.0.1:7002").count(), 1, "repeats dropped: {got:?}");
        assert!(got.iter().all(|a| a.parse::<std::net::SocketAddr>().is_ok()), "{got:?}");
        let kept = resolve(&["no-such-host.invalid:7001".into()]).await;
        assert_eq!(kept, vec!["no-such-host.invalid:7001"]);
    }
}
