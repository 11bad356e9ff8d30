public enum MeshSimPlaceholder {}
