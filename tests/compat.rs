//! gobetween 0.8 configs and behaviours that betwixt must match at run time.

use tokio::net::TcpStream;

use crate::util::*;

#[tokio::test]
async fn a_server_without_backends_closes_clients_at_once_and_counts_them() {
    let balancer = start_balancer(&server_config("empty", "", &[], "")).await;
    let addr = balancer.local_addr("empty").unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_peer(&mut client).await);
    eventually("the client counted as unserved", || {
        server_report(&balancer, "empty").unserved == 1
    })
    .await;
    assert!(server_report(&balancer, "empty").backends.is_empty());
}
