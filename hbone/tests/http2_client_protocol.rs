//! Our HTTP/2 client end (`hbone::http2::Connection::client`) against a hand-written raw server
//! over mesh TLS: what the server sends may cross what the client does (a response crossing the
//! client's cancel, a reset after a complete answer), and some settings a server may not send.

mod support;

use std::time::Duration;

use hbone::http2::Connection;
use support::raw_h2::*;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Our client `Connection` and the raw server it talks to: TLS both ways, the client's preface
/// read, and the raw server's SETTINGS (`server_settings`) sent.
async fn client_and_raw_server(
    mesh: &Mesh,
    server_settings: &[(u16, u32)],
) -> (Connection, Peer<TlsStream<TcpStream>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(hbone::tls::server_config(&mesh.server_store, mesh.server.clone()));
    let client = our_connection(mesh, addr);
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.unwrap()
    };
    let (conn, tls) = tokio::time::timeout(WAIT, async { tokio::join!(client, server) }).await.expect("TLS in time");
    let mut p = Peer::over(tls);
    while p.buf.len() < PREFACE.len() {
        let more = tokio::time::timeout(WAIT, p.read_more()).await.expect("the client preface in time");
        assert!(more, "the client closed before its preface");
    }
    assert_eq!(&p.buf[..PREFACE.len()], PREFACE);
    p.buf.drain(..PREFACE.len());
    p.send(&settings(server_settings)).await.unwrap();
    (conn, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_crosses_the_clients_cancel_is_ignored() {
    // RFC 9113 §5.1, closed: frames received after sending RST_STREAM are ignored. A caller
    // that gives up on a CONNECT (a timeout, its own client leaving) resets the stream; the
    // answer already in flight closed the pooled connection and every stream on it.
    let mesh = Mesh::new();
    let (conn, mut srv) = client_and_raw_server(&mesh, &[]).await;
    let gave_up = tokio::time::timeout(Duration::from_millis(300), conn.request(&CONNECT_HEAD)).await;
    assert!(gave_up.is_err(), "no answer was sent yet");
    srv.expect("HEADERS on stream 1", |f| f.kind == HEADERS && f.stream == 1).await;
    srv.expect_rst(1, CANCEL).await;
    srv.send(&[frame(HEADERS, END_HEADERS, 1, &[0x88]), frame(DATA, END_STREAM, 1, b"late")].concat()).await.unwrap();
    srv.ping(*b"in sync?").await;
    let second = tokio::spawn({
        let conn = conn.clone();
        async move { conn.request(&CONNECT_HEAD).await.map(|_| ()) }
    });
    srv.expect("HEADERS on stream 3", |f| f.kind == HEADERS && f.stream == 3).await;
    srv.send(&frame(HEADERS, END_HEADERS, 3, &[0x88])).await.unwrap();
    let r = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert!(r.is_ok(), "a second request on the connection: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_push_from_a_server_is_a_protocol_error() {
    // RFC 9113 §6.5.2: a client MUST treat SETTINGS_ENABLE_PUSH = 1 as a connection error of
    // type PROTOCOL_ERROR.
    let mesh = Mesh::new();
    let (_conn, mut srv) = client_and_raw_server(&mesh, &[(ENABLE_PUSH, 1)]).await;
    let g = srv.expect_goaway(PROTOCOL_ERROR).await;
    assert!(g.debug.contains("ENABLE_PUSH"), "the reason names the setting: {g:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_reset_after_a_full_answer_gets_no_reset_back() {
    // A server that answered in full stops the client's upload with RST_STREAM(NO_ERROR)
    // (§8.1); the stream is then closed both ways, and §5.4.2 forbids answering a RST_STREAM
    // with one. Dropping the client's handle sent RST_STREAM(CANCEL).
    let mesh = Mesh::new();
    let (conn, mut srv) = client_and_raw_server(&mesh, &[]).await;
    let req = tokio::spawn({
        let conn = conn.clone();
        async move { conn.request(&CONNECT_HEAD).await }
    });
    srv.expect("HEADERS on stream 1", |f| f.kind == HEADERS && f.stream == 1).await;
    let answer = [frame(HEADERS, END_HEADERS, 1, &[0x88]), frame(DATA, END_STREAM, 1, b"bye"), rst(1, NO_ERROR)];
    srv.send(&answer.concat()).await.unwrap();
    let (stream, _) = tokio::time::timeout(WAIT, req).await.unwrap().unwrap().unwrap();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, std::future::poll_fn(|cx| stream.poll_data(cx))).await.unwrap() {
            Some(Ok(b)) => {
                stream.release(b.len());
                got.extend_from_slice(&b);
            }
            Some(Err(e)) => panic!("reading the answer: {e}"),
            None => break,
        }
    }
    assert_eq!(got, b"bye");
    drop(stream);
    srv.send(&frame(PING, 0, 0, b"dropped!")).await.unwrap();
    let f = srv.expect("PING ACK", |f| (f.kind == PING && f.flags == ACK) || f.kind == RST_STREAM).await;
    assert_eq!(f.kind, PING, "the client reset closed stream {} (code {:#x})", f.stream, f.word());
}
