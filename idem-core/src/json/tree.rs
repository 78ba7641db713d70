//! The canonical form of a document with objects out of order, in time
//! linear in its size: read once into spans of the input, each object's
//! members sorted as indices, written once.

use super::Parser;

#[derive(Clone, Copy)]
enum Node {
    /// A string, number or literal: its bytes in the input.
    Leaf(usize, usize),
    /// `len` node ids in `kids` from `first`.
    Array { first: usize, len: usize },
    /// `len` members in `members` from `first`.
    Object { first: usize, len: usize },
}

#[derive(Clone, Copy)]
struct Member {
    /// The key's bytes in the input, quotes included.
    key: (usize, usize),
    value: usize,
}

struct Tree<'a> {
    p: Parser<'a>,
    nodes: Vec<Node>,
    kids: Vec<usize>,
    members: Vec<Member>,
    /// Children of the containers being read, moved to `kids` or
    /// `members` when their container ends: each is moved once.
    open_kids: Vec<usize>,
    open_members: Vec<Member>,
}

pub(super) fn canonicalize(input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut t = Tree {
        p: Parser {
            s: input,
            i: 0,
            unsorted: false,
        },
        nodes: Vec::new(),
        kids: Vec::new(),
        members: Vec::new(),
        open_kids: Vec::new(),
        open_members: Vec::new(),
    };
    t.p.ws();
    let Some(root) = t.value(0) else {
        return false;
    };
    t.p.ws();
    if t.p.i != input.len() {
        return false;
    }
    t.write(root, out);
    true
}

impl Tree<'_> {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn value(&mut self, depth: usize) -> Option<usize> {
        if depth > super::MAX_DEPTH {
            return None;
        }
        let start = self.p.i;
        match self.p.peek()? {
            b'{' => return self.object(depth),
            b'[' => return self.array(depth),
            b'"' => self.p.string()?,
            b't' => self.p.skip_literal(b"true")?,
            b'f' => self.p.skip_literal(b"false")?,
            b'n' => self.p.skip_literal(b"null")?,
            _ => self.p.skip_number()?,
        }
        Some(self.push(Node::Leaf(start, self.p.i)))
    }

    fn array(&mut self, depth: usize) -> Option<usize> {
        self.p.i += 1;
        let base = self.open_kids.len();
        self.p.ws();
        if self.p.peek()? == b']' {
            self.p.i += 1;
        } else {
            loop {
                self.p.ws();
                let v = self.value(depth + 1)?;
                self.open_kids.push(v);
                self.p.ws();
                match self.p.peek()? {
                    b',' => self.p.i += 1,
                    b']' => {
                        self.p.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        let first = self.kids.len();
        self.kids.extend(self.open_kids.drain(base..));
        let len = self.kids.len() - first;
        Some(self.push(Node::Array { first, len }))
    }

    fn object(&mut self, depth: usize) -> Option<usize> {
        self.p.i += 1;
        let base = self.open_members.len();
        self.p.ws();
        if self.p.peek()? == b'}' {
            self.p.i += 1;
        } else {
            loop {
                self.p.ws();
                if self.p.peek()? != b'"' {
                    return None;
                }
                let key_start = self.p.i;
                self.p.string()?;
                let key = (key_start, self.p.i);
                self.p.ws();
                if self.p.peek()? != b':' {
                    return None;
                }
                self.p.i += 1;
                self.p.ws();
                let value = self.value(depth + 1)?;
                self.open_members.push(Member { key, value });
                self.p.ws();
                match self.p.peek()? {
                    b',' => self.p.i += 1,
                    b'}' => {
                        self.p.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        let first = self.members.len();
        self.members.extend(self.open_members.drain(base..));
        let s = self.p.s;
        // Stable: duplicate keys keep their order.
        self.members[first..].sort_by(|a, b| s[a.key.0..a.key.1].cmp(&s[b.key.0..b.key.1]));
        let len = self.members.len() - first;
        Some(self.push(Node::Object { first, len }))
    }

    /// Writes `node` in canonical form. Recursion is bounded by
    /// `MAX_DEPTH`, checked while reading.
    fn write(&self, node: usize, out: &mut Vec<u8>) {
        let s = self.p.s;
        match self.nodes[node] {
            Node::Leaf(a, b) => out.extend_from_slice(&s[a..b]),
            Node::Array { first, len } => {
                out.push(b'[');
                for (n, &kid) in self.kids[first..first + len].iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    self.write(kid, out);
                }
                out.push(b']');
            }
            Node::Object { first, len } => {
                out.push(b'{');
                for (n, m) in self.members[first..first + len].iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&s[m.key.0..m.key.1]);
                    out.push(b':');
                    self.write(m.value, out);
                }
                out.push(b'}');
            }
        }
    }
}
