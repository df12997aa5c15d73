//! The in-memory file tree: an arena of nodes indexed by inode, with a free list.
//!
//! Nodes are shared copy-on-write: cloning the tree (for `fork`) copies one pointer per node,
//! and a node is copied the first time a tree changes it ([`Arc::make_mut`]). Copying a file
//! node copies its chunk pointers, not its bytes (see [`FileData`]). A node lives while a
//! directory entry names it or an open file description (or the working directory) refers to
//! it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::device::Device;
use super::errno::{Errno, VfsResult};
use super::filedata::FileData;
use super::stat::{BLOCK_SIZE, FileKind, Stat, Timespec, blocks_for, now};

/// Index of a node in the arena. The inode number reported to the guest is `id + 1`.
pub(crate) type NodeId = u32;

/// Device id reported for in-memory files.
pub(crate) const MEMORY_DEV: u32 = 1;

/// Directory size reported by `stat`.
const DIR_SIZE: u64 = 4096;

/// One file, directory, symbolic link or device.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub kind: NodeKind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Directory entries naming this node.
    pub links: u32,
    /// Open file descriptions and working directories referring to this node.
    pub open_refs: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

/// What a node is.
#[derive(Clone, Debug)]
pub(crate) enum NodeKind {
    File(FileData),
    Dir(DirNode),
    Symlink(Box<[u8]>),
    Device(Device),
}

/// A directory's entries (sorted by name, which is the listing order) and its place in the tree.
#[derive(Clone, Debug, Default)]
pub(crate) struct DirNode {
    pub entries: BTreeMap<Box<[u8]>, NodeId>,
    /// The containing directory (the root is its own parent).
    pub parent: NodeId,
    /// Index of the host mount covering this directory, if it is a mount point.
    pub mount: Option<usize>,
    /// Number of entries that are directories (for `st_nlink`).
    pub subdirs: u32,
}

impl Node {
    fn new(kind: NodeKind, perm: u32) -> Node {
        let time = now();
        Node {
            kind,
            perm: perm & super::stat::PERMISSION_BITS,
            links: 0,
            open_refs: 0,
            atime: time,
            mtime: time,
            ctime: time,
        }
    }

    /// The kind of file this node is.
    pub fn file_kind(&self) -> FileKind {
        match self.kind {
            NodeKind::File(_) => FileKind::Regular,
            NodeKind::Dir(_) => FileKind::Directory,
            NodeKind::Symlink(_) => FileKind::Symlink,
            NodeKind::Device(_) => FileKind::CharDevice,
        }
    }

    /// Marks a content change (mtime and ctime).
    pub fn touch(&mut self) {
        let time = now();
        self.mtime = time;
        self.ctime = time;
    }
}

/// Counts describing the memory the in-memory tree holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Live nodes (files, directories, links, devices).
    pub nodes: usize,
    /// Regular files.
    pub files: usize,
    /// Total logical size of the regular files.
    pub file_bytes: u64,
    /// Data chunks this tree refers to (all-zero ranges take none).
    pub stored_chunks: usize,
    /// Bytes held in those chunks.
    pub stored_bytes: u64,
    /// Chunks also used by another tree (shared copy-on-write with a fork or its parent).
    pub shared_chunks: usize,
    /// Nodes also used by another tree.
    pub shared_nodes: usize,
}

/// The arena of nodes.
#[derive(Clone, Debug)]
pub(crate) struct MemTree {
    nodes: Vec<Option<Arc<Node>>>,
    free: Vec<NodeId>,
}

impl MemTree {
    /// A tree with only the root directory.
    pub fn new() -> MemTree {
        let mut root = Node::new(
            NodeKind::Dir(DirNode {
                parent: 0,
                ..DirNode::default()
            }),
            0o755,
        );
        root.links = 1;
        MemTree {
            nodes: vec![Some(Arc::new(root))],
            free: Vec::new(),
        }
    }

    /// The root directory.
    pub const ROOT: NodeId = 0;

    /// The node `id`, which must be live.
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[id as usize]
            .as_ref()
            .expect("reference to a freed node")
    }

    /// The node `id`, mutably (copied first if another tree shares it).
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        Arc::make_mut(
            self.nodes[id as usize]
                .as_mut()
                .expect("reference to a freed node"),
        )
    }

    /// The directory data of `id`, or `ENOTDIR`.
    pub fn dir(&self, id: NodeId) -> VfsResult<&DirNode> {
        match &self.node(id).kind {
            NodeKind::Dir(dir) => Ok(dir),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// The directory data of `id`, mutably, or `ENOTDIR`.
    pub fn dir_mut(&mut self, id: NodeId) -> VfsResult<&mut DirNode> {
        match &mut self.node_mut(id).kind {
            NodeKind::Dir(dir) => Ok(dir),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// The entry `name` of directory `dir` (no `.`/`..` handling).
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> VfsResult<Option<NodeId>> {
        Ok(self.dir(dir)?.entries.get(name).copied())
    }

    /// The parent of directory `dir`.
    pub fn parent(&self, dir: NodeId) -> NodeId {
        self.dir(dir).map_or(dir, |d| d.parent)
    }

    /// Creates a node and links it as `name` in `parent`; `EEXIST` if the name is taken.
    pub fn create(&mut self, parent: NodeId, name: &[u8], kind: NodeKind, perm: u32) -> VfsResult<NodeId> {
        if self.lookup(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.check_alive(parent)?;
        let kind = match kind {
            NodeKind::Dir(dir) => NodeKind::Dir(DirNode { parent, ..dir }),
            other => other,
        };
        let id = self.alloc(Node::new(kind, perm));
        self.link(parent, name, id)?;
        Ok(id)
    }

    /// `ENOENT` for a directory that was removed while still open or current: it takes no new
    /// entries.
    fn check_alive(&self, dir: NodeId) -> VfsResult<()> {
        if self.node(dir).links == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(())
    }

    fn alloc(&mut self, node: Node) -> NodeId {
        let node = Arc::new(node);
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = Some(node);
                id
            }
            None => {
                let id = NodeId::try_from(self.nodes.len()).expect("node arena overflow");
                self.nodes.push(Some(node));
                id
            }
        }
    }

    /// Adds the entry `name` → `id` to `parent` (which must not have it). `ENOENT` if `parent`
    /// was removed.
    pub fn link(&mut self, parent: NodeId, name: &[u8], id: NodeId) -> VfsResult<()> {
        self.check_alive(parent)?;
        let is_dir = matches!(self.node(id).kind, NodeKind::Dir(_));
        let dir = self.dir_mut(parent)?;
        dir.entries.insert(name.into(), id);
        if is_dir {
            dir.subdirs += 1;
        }
        self.node_mut(parent).touch();
        let node = self.node_mut(id);
        node.links += 1;
        node.ctime = now();
        if let NodeKind::Dir(dir) = &mut node.kind {
            dir.parent = parent;
        }
        Ok(())
    }

    /// Removes the entry `name` from `parent` and frees its node if nothing else refers to it.
    pub fn unlink(&mut self, parent: NodeId, name: &[u8]) -> VfsResult<NodeId> {
        let id = self.detach(parent, name)?;
        self.free_if_unused(id);
        Ok(id)
    }

    /// Removes the entry `name` from `parent` without freeing the node.
    fn detach(&mut self, parent: NodeId, name: &[u8]) -> VfsResult<NodeId> {
        let dir = self.dir_mut(parent)?;
        let id = dir.entries.remove(name).ok_or(Errno::ENOENT)?;
        self.node_mut(parent).touch();
        let node = self.node_mut(id);
        node.links -= 1;
        node.ctime = now();
        if matches!(node.kind, NodeKind::Dir(_)) {
            self.dir_mut(parent)?.subdirs -= 1;
        }
        Ok(id)
    }

    /// Moves entry `old_name` of `old_parent` to `new_name` in `new_parent`, replacing what was
    /// there. The caller has checked the POSIX rules (kinds match, target directory empty, no
    /// move into itself).
    pub fn rename(
        &mut self,
        old_parent: NodeId,
        old_name: &[u8],
        new_parent: NodeId,
        new_name: &[u8],
    ) -> VfsResult<()> {
        self.check_alive(new_parent)?;
        let id = self.detach(old_parent, old_name)?;
        if self.lookup(new_parent, new_name)?.is_some() {
            self.unlink(new_parent, new_name)?;
        }
        self.link(new_parent, new_name, id)
    }

    /// Registers one more open reference to `id`.
    pub fn acquire(&mut self, id: NodeId) {
        self.node_mut(id).open_refs += 1;
    }

    /// Drops one open reference to `id`, freeing it if it was the last and it has no name left.
    pub fn release(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        node.open_refs -= 1;
        self.free_if_unused(id);
    }

    fn free_if_unused(&mut self, id: NodeId) {
        let node = self.node(id);
        if node.links == 0 && node.open_refs == 0 && id != Self::ROOT {
            self.nodes[id as usize] = None;
            self.free.push(id);
        }
    }

    /// Whether `ancestor` is `id` or one of its containing directories.
    pub fn is_ancestor(&self, ancestor: NodeId, mut id: NodeId) -> bool {
        loop {
            if id == ancestor {
                return true;
            }
            let parent = self.parent(id);
            if parent == id {
                return false;
            }
            id = parent;
        }
    }

    /// The absolute path of directory `dir` (a removed directory gets the path it had in its
    /// last known parent, or `/` once that chain is broken).
    pub fn path_of(&self, mut dir: NodeId) -> Vec<u8> {
        let mut names: Vec<&[u8]> = Vec::new();
        while dir != Self::ROOT {
            let parent = self.parent(dir);
            let Some(name) = self.nodes[parent as usize]
                .as_ref()
                .and_then(|node| match &node.kind {
                    NodeKind::Dir(d) => d.entries.iter().find(|(_, id)| **id == dir),
                    _ => None,
                })
                .map(|(name, _)| &**name)
            else {
                break;
            };
            names.push(name);
            dir = parent;
        }
        if names.is_empty() {
            return b"/".to_vec();
        }
        let mut path = Vec::new();
        for name in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        path
    }

    /// `stat` of node `id`.
    pub fn stat(&self, id: NodeId) -> Stat {
        let node = self.node(id);
        let (size, nlink, rdev) = match &node.kind {
            NodeKind::File(data) => (data.len(), node.links, 0),
            NodeKind::Dir(dir) => (DIR_SIZE, 2 + dir.subdirs, 0),
            NodeKind::Symlink(target) => (target.len() as u64, node.links, 0),
            NodeKind::Device(device) => (0, node.links, device.rdev()),
        };
        Stat {
            dev: MEMORY_DEV,
            mode: node.file_kind().mode_bits() | node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            blksize: BLOCK_SIZE,
            blocks: blocks_for(size),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            ino: u64::from(id) + 1,
        }
    }

    /// The arena's slots (`None` for a free slot), indexed by [`NodeId`], for snapshots.
    pub(super) fn slots(&self) -> &[Option<Arc<Node>>] {
        &self.nodes
    }

    /// The free slots in the order they will be reused (last first), for snapshots.
    pub(super) fn free_list(&self) -> &[NodeId] {
        &self.free
    }

    /// A tree from the slots and free list a snapshot recorded. Checks what the arena itself
    /// relies on: slot 0 is a live directory (the root), and the free list names exactly the
    /// free slots, each once. The links between nodes are the caller's to check.
    pub(super) fn from_parts(nodes: Vec<Option<Arc<Node>>>, free: Vec<NodeId>) -> Result<MemTree, String> {
        if !matches!(nodes.first(), Some(Some(root)) if matches!(root.kind, NodeKind::Dir(_))) {
            return Err("node 0 (the root) is not a directory".into());
        }
        let mut listed = vec![false; nodes.len()];
        for &id in &free {
            match nodes.get(id as usize) {
                Some(None) if !listed[id as usize] => listed[id as usize] = true,
                Some(None) => return Err(format!("free list names node slot {id} twice")),
                Some(Some(_)) => return Err(format!("free list names live node {id}")),
                None => return Err(format!("free list names node slot {id} past the arena's end")),
            }
        }
        let free_slots = nodes.iter().filter(|slot| slot.is_none()).count();
        if free_slots != free.len() {
            return Err(format!(
                "{free_slots} free node slots but the free list has {}",
                free.len()
            ));
        }
        Ok(MemTree { nodes, free })
    }

    /// Number of live nodes.
    pub fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Memory accounting over all regular files.
    pub fn memory_stats(&self) -> MemoryStats {
        let mut stats = MemoryStats {
            nodes: self.live_nodes(),
            shared_nodes: self.shared_nodes(),
            ..MemoryStats::default()
        };
        for node in self.nodes.iter().flatten() {
            let node_shared = Arc::strong_count(node) > 1;
            if let NodeKind::File(data) = &node.kind {
                stats.files += 1;
                stats.file_bytes += data.len();
                data.for_each_chunk(|chunk| {
                    stats.stored_chunks += 1;
                    stats.stored_bytes += chunk.len() as u64;
                    if node_shared || Arc::strong_count(chunk) > 1 {
                        stats.shared_chunks += 1;
                    }
                });
            }
        }
        stats
    }

    /// Number of nodes also used by another tree (a fork or its parent).
    pub fn shared_nodes(&self) -> usize {
        self.nodes
            .iter()
            .flatten()
            .filter(|node| Arc::strong_count(node) > 1)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> NodeKind {
        NodeKind::File(FileData::default())
    }

    fn dir() -> NodeKind {
        NodeKind::Dir(DirNode::default())
    }

    #[test]
    fn create_lookup_unlink_and_reuse() {
        let mut tree = MemTree::new();
        let a = tree.create(MemTree::ROOT, b"a", file(), 0o644).unwrap();
        assert_eq!(tree.lookup(MemTree::ROOT, b"a"), Ok(Some(a)));
        assert_eq!(
            tree.create(MemTree::ROOT, b"a", file(), 0o644),
            Err(Errno::EEXIST)
        );
        assert_eq!(tree.stat(a).ino, u64::from(a) + 1);
        let nodes = tree.live_nodes();
        tree.unlink(MemTree::ROOT, b"a").unwrap();
        assert_eq!(tree.live_nodes(), nodes - 1);
        let b = tree.create(MemTree::ROOT, b"b", file(), 0o644).unwrap();
        assert_eq!(b, a, "freed slots are reused");
    }

    #[test]
    fn open_node_outlives_its_name() {
        let mut tree = MemTree::new();
        let a = tree.create(MemTree::ROOT, b"a", file(), 0o644).unwrap();
        tree.acquire(a);
        tree.unlink(MemTree::ROOT, b"a").unwrap();
        assert_eq!(tree.node(a).links, 0);
        assert_eq!(tree.stat(a).nlink, 0);
        tree.release(a);
        assert_eq!(tree.live_nodes(), 1);
    }

    #[test]
    fn directory_link_counts_and_paths() {
        let mut tree = MemTree::new();
        let d = tree.create(MemTree::ROOT, b"d", dir(), 0o755).unwrap();
        let e = tree.create(d, b"e", dir(), 0o755).unwrap();
        assert_eq!(tree.stat(MemTree::ROOT).nlink, 3);
        assert_eq!(tree.stat(d).nlink, 3);
        assert_eq!(tree.parent(e), d);
        assert_eq!(tree.path_of(e), b"/d/e");
        assert_eq!(tree.path_of(MemTree::ROOT), b"/");
        assert!(tree.is_ancestor(d, e));
        assert!(!tree.is_ancestor(e, d));
        tree.rename(d, b"e", MemTree::ROOT, b"f").unwrap();
        assert_eq!(tree.parent(e), MemTree::ROOT);
        assert_eq!(tree.stat(d).nlink, 2);
        assert_eq!(tree.path_of(e), b"/f");
    }

    #[test]
    fn clones_share_nodes_until_changed() {
        let mut tree = MemTree::new();
        let a = tree.create(MemTree::ROOT, b"a", file(), 0o644).unwrap();
        let b = tree.create(MemTree::ROOT, b"b", file(), 0o644).unwrap();
        let mut copy = tree.clone();
        assert_eq!(tree.shared_nodes(), 3);
        copy.node_mut(a).perm = 0o600;
        assert_eq!(copy.shared_nodes(), 2);
        assert_eq!(tree.node(a).perm, 0o644);
        copy.unlink(MemTree::ROOT, b"b").unwrap();
        assert_eq!(tree.lookup(MemTree::ROOT, b"b"), Ok(Some(b)));
        assert_eq!(copy.lookup(MemTree::ROOT, b"b"), Ok(None));
        assert_eq!(tree.live_nodes(), 3);
        assert_eq!(copy.live_nodes(), 2);
    }

    #[test]
    fn rename_replaces_and_frees_the_target() {
        let mut tree = MemTree::new();
        let a = tree.create(MemTree::ROOT, b"a", file(), 0o644).unwrap();
        tree.create(MemTree::ROOT, b"b", file(), 0o644).unwrap();
        let nodes = tree.live_nodes();
        tree.rename(MemTree::ROOT, b"a", MemTree::ROOT, b"b").unwrap();
        assert_eq!(tree.lookup(MemTree::ROOT, b"b"), Ok(Some(a)));
        assert_eq!(tree.lookup(MemTree::ROOT, b"a"), Ok(None));
        assert_eq!(tree.live_nodes(), nodes - 1);
    }
}
