//! The HTTP scenarios' server, the same for every contender: nginx from Debian in the
//! server pod, one process on the server's CPU (`master_process off`), HTTP/1.1 on one port
//! and h2c with prior knowledge on the other (nginx 1.22 cannot serve both on one plaintext
//! port), a 3-byte answer to every request, no access log, and keep-alive connections that
//! nginx never closes during a run (its default closes them after 1000 requests).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::contender::Bins;
use super::http::{HTTP1, HTTP2};
use super::topo::{Proc, SERVER_IP, Topology};

/// nginx's configuration; its pid file and temporary files go under `dir`.
pub fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         pid {d}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{\n    worker_connections 8192;\n}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   default_type text/plain;\n\
         \x20   client_body_temp_path {d}/body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   keepalive_requests 1000000000;\n\
         \x20   keepalive_timeout 300s;\n\
         \x20   http2_max_concurrent_streams 1024;\n\
         \x20   server {{\n\
         \x20       listen {h1} backlog=4096;\n\
         \x20       listen {h2} backlog=4096 http2;\n\
         \x20       location / {{\n            return 200 \"ok\\n\";\n        }}\n\
         \x20   }}\n\
         }}\n",
        h1 = HTTP1.target,
        h2 = HTTP2.target,
    )
}

/// Starts nginx in the server pod and waits until it answers.
pub fn start(topo: &Topology, bins: &Bins) -> Result<Proc> {
    let dir = topo.workdir().join("nginx");
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(&dir)).with_context(|| format!("writing {}", conf.display()))?;
    let args = [
        "-e".to_string(),
        "stderr".into(),
        "-p".into(),
        dir.display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ];
    let mut nginx = Proc::spawn(topo, "nginx", &topo.server(), "nginx", &args)?;
    let probe = bins.tool_output(
        &topo.plain("server"),
        &[
            "http-get".into(),
            format!("{SERVER_IP}:{}", HTTP1.target),
            "/".into(),
            "--timeout".into(),
            "10".into(),
        ],
    );
    nginx.check_alive()?;
    probe.context("nginx did not answer")?;
    // The h2c port opens with the other one; a moment for a crash to show.
    std::thread::sleep(Duration::from_millis(50));
    nginx.check_alive()?;
    Ok(nginx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_port_per_http_version_and_no_request_limit() {
        let c = config(Path::new("/w/nginx"));
        assert!(c.contains("listen 8080 backlog=4096;\n"), "{c}");
        assert!(c.contains("listen 8081 backlog=4096 http2;\n"), "{c}");
        assert!(c.contains("master_process off;\n"));
        assert!(c.contains("access_log off;\n"));
        assert!(c.contains("keepalive_requests 1000000000;\n"));
        assert!(c.contains("pid /w/nginx/nginx.pid;\n"));
        assert!(c.contains("return 200 \"ok\\n\";"));
        // Balanced braces: nginx refuses the file otherwise.
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }
}
