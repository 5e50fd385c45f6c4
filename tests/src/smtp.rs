//! A small SMTP server for tests: it accepts every message on a random port
//! and hands the received mail to the test, decoded, so tests can read the
//! links out of what fhirgate sent.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{mpsc, Mutex},
};

/// One received message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    /// The raw message as sent (headers and MIME body).
    pub raw: String,
}

pub struct SmtpServer {
    /// `smtp://127.0.0.1:<port>`, for FHIRGATE_SMTP_URL.
    pub url: String,
    received: Mutex<mpsc::UnboundedReceiver<Mail>>,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("SMTP port");
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let (sender, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let _ = session(stream, sender).await;
                });
            }
        });
        SmtpServer {
            url,
            received: Mutex::new(received),
        }
    }

    /// The next message, waiting up to 10 s.
    pub async fn next(&self) -> Mail {
        tokio::time::timeout(Duration::from_secs(10), self.received.lock().await.recv())
            .await
            .expect("a message within 10 s")
            .expect("SMTP server running")
    }

    /// Asserts that no message arrives within `wait`.
    pub async fn assert_none(&self, wait: Duration) {
        if let Ok(Some(mail)) = tokio::time::timeout(wait, self.received.lock().await.recv()).await
        {
            panic!("unexpected mail to {:?}: {}", mail.to, mail.raw);
        }
    }
}

/// An SMTP URL nobody listens on, to make sending fail.
pub async fn unreachable_smtp_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("smtp://{address}")
}

async fn session(stream: TcpStream, sender: mpsc::UnboundedSender<Mail>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 test SMTP ready\r\n").await?;
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
            b"250-test\r\n250 8BITMIME\r\n"
        } else if command.starts_with("RCPT TO:") {
            let address = line.trim_end()[8..].trim().trim_matches(['<', '>']);
            to.push(address.to_string());
            b"250 OK\r\n"
        } else if command == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut raw = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                raw.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            let _ = sender.send(Mail {
                to: std::mem::take(&mut to),
                raw,
            });
            b"250 queued\r\n"
        } else if command == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            // MAIL FROM, RSET, NOOP and the rest.
            b"250 OK\r\n"
        };
        write.write_all(reply).await?;
    }
}

impl Mail {
    /// The decoded body of the part with this content type (`text/plain`, `text/html`).
    pub fn part(&self, content_type: &str) -> String {
        let raw = self.raw.replace("\r\n", "\n");
        // Split at the message's own boundary: a quoted-printable line of the
        // link may start with `--` too (its secret is URL-safe base64).
        let parts: Vec<&str> = match boundary(&raw) {
            Some(boundary) => raw.split(&format!("\n--{boundary}")).collect(),
            None => vec![raw.as_str()],
        };
        for part in parts {
            let Some((headers, body)) = part.split_once("\n\n") else {
                continue;
            };
            let headers = headers.to_ascii_lowercase();
            if !headers.contains(&format!("content-type: {content_type}")) {
                continue;
            }
            let body = body.trim_end();
            return if headers.contains("content-transfer-encoding: base64") {
                String::from_utf8(STANDARD.decode(body.replace('\n', "")).unwrap()).unwrap()
            } else if headers.contains("content-transfer-encoding: quoted-printable") {
                quoted_printable(body)
            } else {
                body.to_string()
            };
        }
        panic!("no {content_type} part in {}", self.raw)
    }

    pub fn subject(&self) -> String {
        self.raw
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_string()
    }

    /// The `(id, secret)` of the first link to `page` (`setpassword`, `verifyemail`).
    pub fn link(&self, page: &str) -> (String, String) {
        let text = self.part("text/plain");
        let start = text
            .find(&format!("/{page}/"))
            .unwrap_or_else(|| panic!("no {page} link in {text}"));
        let rest: String = text[start + page.len() + 2..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '?')
            .collect();
        let (id, secret) = rest.split_once('/').expect("id/secret");
        (id.to_string(), secret.to_string())
    }
}

/// The multipart boundary named in the message's headers, if any.
fn boundary(raw: &str) -> Option<&str> {
    let start = raw.find("boundary=")? + "boundary=".len();
    let rest = raw[start..].trim_start_matches('"');
    let end = rest.find(|c: char| c == '"' || c == ';' || c.is_whitespace())?;
    Some(&rest[..end])
}

fn quoted_printable(body: &str) -> String {
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() + 1 {
            if let Ok(byte) = u8::from_str_radix(&joined[i + 1..(i + 3).min(joined.len())], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}
