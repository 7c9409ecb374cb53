//! `/metrics` as an operator scrapes it: per-RPC series are labelled only with the methods Sluice
//! serves, so clients calling made-up paths cannot grow the number of series.

use tonic::{Code, codegen::http::uri::PathAndQuery};

use crate::helpers::{http_get, spawn_app};

#[tokio::test]
async fn calls_to_unknown_methods_share_one_label_and_create_no_series_of_their_own() {
    let app = spawn_app().await;
    let made_up: Vec<String> = (0..3)
        .map(|i| format!("/bogus{i}.Service/Nope{}", uuid::Uuid::new_v4().simple()))
        .collect();
    for path in &made_up {
        let mut grpc = tonic::client::Grpc::new(app.channel.clone());
        grpc.ready().await.expect("the channel connects");
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let status = grpc
            .unary(
                tonic::Request::new(()),
                PathAndQuery::try_from(path.as_str()).expect("a valid path"),
                codec,
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }

    let metrics = http_get(app.http_addr, "/metrics").await.unwrap().body;
    for path in &made_up {
        let service = path.split('/').nth(1).unwrap();
        assert!(
            !metrics.contains(service),
            "{service} has series:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("sluice_grpc_requests_total{code=\"UNIMPLEMENTED\",method=\"unknown\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_grpc_request_duration_seconds_count{method=\"unknown\"} 3"),
        "{metrics}"
    );
}
