//! Reloads that change `[api]` and `[metrics]`: listeners move, stop, start, change settings;
//! a bind or TLS failure keeps the listener that was running.

use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};

use super::*;

async fn ping(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(_) => {
            request(addr, Method::GET, "/ping", HeaderMap::new(), "")
                .await
                .status
                == StatusCode::OK
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn api_and_metrics_follow_reloads() {
    let servers = server_config("k3s", "", &[closed_port().await], "");
    let mut lb = Balancer::start(&format!("{ENDPOINTS}{servers}")).await;
    let (api, metrics) = (lb.api(), lb.metrics_addr());

    // Settings change in place: the new password applies, the address stays.
    let changed = format!("{ENDPOINTS}{servers}").replace("s3cret", "changed");
    lb.endpoints.reconfigure(&parse_config(&changed)).await;
    assert_eq!(lb.api(), api);
    assert_eq!(lb.get("/servers").await.status, StatusCode::UNAUTHORIZED);

    // A port in use: logged, the running API stays.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let clash = changed.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
    lb.endpoints.reconfigure(&parse_config(&clash)).await;
    assert_eq!(lb.api(), api, "port {port} taken");
    assert!(ping(api).await);

    // Unusable TLS files: logged, the running API stays as it was.
    let tls =
        "[api.tls]\ncert_path = \"/nonexistent/cert.pem\"\nkey_path = \"/nonexistent/key.pem\"\n";
    lb.endpoints
        .reconfigure(&parse_config(&format!("{changed}{tls}")))
        .await;
    assert!(ping(api).await, "still plain HTTP");

    // A new bind moves the API; metrics disabled stop.
    let moved = changed
        .replacen("127.0.0.1:0", "127.0.0.2:0", 1)
        .replace("[metrics]\nenabled = true", "[metrics]\nenabled = false");
    lb.endpoints.reconfigure(&parse_config(&moved)).await;
    let new_api = lb.api();
    assert_eq!(new_api.ip().to_string(), "127.0.0.2");
    assert!(ping(new_api).await);
    assert!(!ping(api).await, "the old address is closed");
    assert_eq!(lb.endpoints.metrics_addr(), None);
    assert!(TcpStream::connect(metrics).await.is_err());

    // Metrics back, API off.
    let api_off = changed.replace("[api]\nenabled = true", "[api]\nenabled = false");
    lb.endpoints.reconfigure(&parse_config(&api_off)).await;
    assert_eq!(lb.endpoints.api_addr(), None);
    assert!(lb.endpoints.metrics_addr().is_some());
    assert!(!ping(new_api).await);
    drop(taken);
}
